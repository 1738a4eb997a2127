"""Log lines are JSON (or, for people, one console line each), carry the request id, and
never show a secret."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest

import config.logging as log_config
from config.logging import (
    PER_TASK_LOGGERS,
    ConsoleFormatter,
    build_formatter,
    build_handler,
    configure_logging,
    mask_text,
    mask_value,
    request_id_var,
    wants_colour,
)

ANSI = re.compile(r"\033\[[0-9;]*m")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "eyJhbGciOiJIUzI1NiJ9.abc.def"),
        ("login with password=hunter2 failed", "hunter2"),
        ('{"api_key": "omx_live_123"}', "omx_live_123"),
        ("connect postgresql://app:s3cret@db:5432/x", "s3cret"),
        ("token: abc.def.ghi", "abc.def.ghi"),
        # Any case: the words mask_text looks for first are matched lower-cased.
        ("BASIC dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("PASSWD=hunter2", "hunter2"),
        ("Api-Key: omx_live_456", "omx_live_456"),
        ("SECRET=shh", "shh"),
        ("AUTHORIZATION=xyz", "xyz"),
        ("REDIS://:pw9@cache:6379/0", "pw9"),
        # The patterns' (?i) matches long s (U+017F) for "s", dotless i (U+0131) and dotted
        # capital I (U+0130) for "i"; lower() does not turn them into those letters.
        ("ba\u017fic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("\u017fecret=shh", "shh"),
        ("pa\u017fsword=hunter2", "hunter2"),
        ("author\u0130zation=xyz", "xyz"),
        ("author\u0131zation=xyz", "xyz"),
    ],
)
def test_mask_text_hides_secrets_in_free_text(text: str, secret: str) -> None:
    masked = mask_text(text)
    assert secret not in masked
    assert "***" in masked


def test_ascii_text_without_a_secret_word_skips_the_patterns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Unreachable:
        def __iter__(self) -> Any:
            raise AssertionError("the patterns ran")

    monkeypatch.setattr(log_config, "_SECRET_TEXT_PATTERNS", Unreachable())
    line = "POST /api/v1/inference/generate 202 from 10.0.0.7"
    assert mask_text(line) is line
    with pytest.raises(AssertionError, match="the patterns ran"):
        mask_text("GET /api/v1/users/me?token=x")


def test_mask_value_walks_structures() -> None:
    masked = mask_value(
        "payload",
        {"user": "ann", "password": "pw1", "headers": {"Authorization": "Bearer x"}, "n": 3},
    )
    assert masked == {"user": "ann", "password": "***", "headers": {"Authorization": "***"}, "n": 3}


def test_handler_writes_json_with_request_id_and_masked_extras(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()  # installs the record factory that stamps request ids
    logger = logging.getLogger("tests.logging")
    logger.propagate = False
    logger.addHandler(build_handler("json"))
    logger.setLevel(logging.INFO)
    token = request_id_var.set("rid-9")
    try:
        logger.info(
            "user %s signed in with password=%s",
            "ann",
            "pw-123",
            extra={"api_key": "k-1", "detail": {"token": "t-1", "ok": True}},
        )
    finally:
        request_id_var.reset(token)
        logger.handlers.clear()

    line = json.loads(capsys.readouterr().out.strip())
    assert line["request_id"] == "rid-9"
    assert line["level"] == "INFO"
    assert line["message"] == "user ann signed in with password=***"
    assert line["api_key"] == "***"
    assert line["detail"] == {"token": "***", "ok": True}
    assert "ts" in line


def test_tracebacks_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("tests.logging.tb")
    logger.propagate = False
    logger.addHandler(build_handler("json"))
    try:
        raise ValueError("bad dsn postgresql://app:topsecret@db/x")
    except ValueError:
        logger.exception("failed")
    finally:
        logger.handlers.clear()
    line = json.loads(capsys.readouterr().out.strip())
    assert "topsecret" not in json.dumps(line)
    assert "ValueError" in line["exc_info"]


@pytest.mark.parametrize(
    "key", ["prompt_tokens", "max_tokens", "token_count", "bypass_cache", "eval_count", "passed"]
)
def test_ordinary_keys_that_contain_secret_words_stay_readable(key: str) -> None:
    assert mask_value(key, 42) == 42


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "new_password",
        "api_key",
        "X-Api-Key",
        "access_token",
        "Authorization",
        "password_hash",
        "secret",
    ],
)
def test_secret_keys_are_masked(key: str) -> None:
    assert mask_value(key, "value") == "***"


def test_a_bad_format_call_logs_instead_of_raising(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("tests.logging.bad")
    logger.propagate = False
    logger.addHandler(build_handler("json"))
    try:
        logger.warning("%s and %s", "only-one")
    finally:
        logger.handlers.clear()
    line = json.loads(capsys.readouterr().out.strip())
    assert "only-one" in line["message"]


def test_other_handlers_see_the_unmasked_template(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging()
    caplog.set_level(logging.INFO, logger="tests.logging.template")
    logging.getLogger("tests.logging.template").info("user %s logged in", "ann")
    [record] = caplog.records
    assert record.msg == "user %s logged in"
    assert record.args == ("ann",)


def _console_line(formatter: logging.Formatter) -> str:
    record = logging.LogRecord("ollamamax.access", logging.WARNING, __file__, 1, "%s", None, None)
    record.args = ("login with password=hunter2",)
    record.request_id = "rid-7"
    record.__dict__.update(api_key="k-1", model="llama3.2:latest", note="two words", said="login")
    return formatter.format(record)


def test_the_console_format_is_one_masked_line_without_colour_by_default() -> None:
    line = _console_line(ConsoleFormatter())
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d WARNING ollamamax\.access: login with password=\*\*\* "
        r'api_key=\*\*\* model=llama3\.2:latest note="two words" request_id=rid-7',
        line,
    ), line
    assert not ANSI.search(line)  # and said=login left out: the message says it


def test_the_console_format_in_colour_says_the_same() -> None:
    line = _console_line(ConsoleFormatter(colour=True))
    assert "\033[33mWARNING" in line  # the level in its colour
    assert ANSI.sub("", line) == _console_line(ConsoleFormatter())


def test_colour_only_on_a_terminal_or_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for name in ("FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    assert not wants_colour(io.StringIO())  # a pipe, a file, CI
    assert wants_colour(Terminal())
    monkeypatch.setenv("FORCE_COLOR", "1")  # what the stack supervisor sets for its children
    assert wants_colour(io.StringIO())
    assert isinstance(build_formatter("console", io.StringIO()), ConsoleFormatter)
    assert build_formatter("console", io.StringIO()).colour  # type: ignore[attr-defined]
    monkeypatch.setenv("FORCE_COLOR", "0")
    assert not wants_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_colour(Terminal())


def test_long_values_and_tracebacks_on_the_console(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("tests.logging.console")
    logger.propagate = False
    logger.addHandler(build_handler("console"))
    try:
        raise ValueError("bad dsn postgresql://app:topsecret@db/x")
    except ValueError:
        logger.exception("failed", extra={"data": {"blob": "x" * 500}})
    finally:
        logger.handlers.clear()
    first, *traceback = capsys.readouterr().out.strip().splitlines()
    assert first.endswith("...")  # the value cut at 200 characters, the line kept whole
    assert len(first) < 300
    assert "ValueError" in traceback[-1]
    assert "topsecret" not in "\n".join(traceback)


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_celerys_per_task_lines_are_heard_only_at_debug(log_format: str) -> None:
    try:
        configure_logging("INFO", log_format)
        assert all(logging.getLogger(n).level == logging.WARNING for n in PER_TASK_LOGGERS)
        configure_logging("DEBUG", log_format)
        assert all(logging.getLogger(n).level == logging.NOTSET for n in PER_TASK_LOGGERS)
        configure_logging("INFO", log_format)
        assert all(logging.getLogger(n).level == logging.WARNING for n in PER_TASK_LOGGERS)
        configure_logging("INFO", log_format, {"celery.app.trace": "INFO"})  # LOG_LEVELS
        assert logging.getLogger("celery.app.trace").level == logging.INFO
        assert logging.getLogger("celery.worker.strategy").level == logging.WARNING
    finally:
        configure_logging()
