"""The local stack's credentials: the admin (ADMIN_* from the environment, or generated once)
and Flower's basic auth, kept owner-only in STACK_STATE_DIR."""

from __future__ import annotations

import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Credentials:
    username: str
    email: str
    password: str
    generated: bool  # True on the run that created them: the only run that prints them


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def state_dir(settings: Settings) -> Path:
    folder = Path(settings.stack_state_dir)
    folder = folder if folder.is_absolute() else ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def _secret_file(path: Path, make: str) -> tuple[str, bool]:
    """The value kept in `path`, or `make` written there (owner-only) on first use."""
    if path.exists():
        return path.read_text().strip(), False
    path.touch(mode=0o600)
    path.write_text(make + "\n")
    return make, True


def admin_credentials(settings: Settings, state: Path) -> Credentials:
    username = settings.admin_username or "admin"
    email = settings.admin_email or "admin@example.com"
    if settings.admin_password:
        return Credentials(username, email, settings.admin_password, generated=False)
    password, generated = _secret_file(state / "admin-password", secrets.token_urlsafe(18))
    return Credentials(username, email, password, generated)


def ensure_admin(credentials: Credentials) -> None:
    done = subprocess.run(  # noqa: S603 - our own CLI, arguments from our settings
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "create-admin",
            "--username",
            credentials.username,
            "--email",
            credentials.email,
            "--password-stdin",
            "--exists-ok",
        ],
        input=credentials.password + "\n",
        text=True,
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"[stack] could not create the admin: {done.stderr or done.stdout}")
    say(done.stdout.strip())


def flower_auth(settings: Settings, state: Path) -> tuple[str, bool]:
    """Flower's `user:password`, and whether it was generated on this run (then shown)."""
    if settings.flower_basic_auth:
        return settings.flower_basic_auth.get_secret_value(), False
    password, generated = _secret_file(state / "flower-password", secrets.token_urlsafe(18))
    return f"operator:{password}", generated
