"""Log lines are JSON, carry the request id, and never show a secret."""

from __future__ import annotations

import json
import logging

import pytest

from config.logging import build_handler, configure_logging, mask_text, mask_value, request_id_var


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "eyJhbGciOiJIUzI1NiJ9.abc.def"),
        ("login with password=hunter2 failed", "hunter2"),
        ('{"api_key": "omx_live_123"}', "omx_live_123"),
        ("connect postgresql://app:s3cret@db:5432/x", "s3cret"),
        ("token: abc.def.ghi", "abc.def.ghi"),
    ],
)
def test_mask_text_hides_secrets_in_free_text(text: str, secret: str) -> None:
    masked = mask_text(text)
    assert secret not in masked
    assert "***" in masked


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
