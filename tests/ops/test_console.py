"""What `make run` prints (ops/console.py): process lines under their names, the first
answer in bold, and the banner framed again once the stack is up."""

from __future__ import annotations

import datetime
import io
import re

import pytest
from honcho.printer import Message

from ops.console import StackPrinter, framed
from ops.first_answer import UP

BANNER = ["API        http://127.0.0.1:11400", "Admin      admin@example.com / secret"]
ANSI = re.compile(r"\033\[[0-9;]*m")


class Terminal(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def _line(name: str, data: str | bytes) -> Message:
    return Message("line", data, datetime.datetime.now(), name, "36")


def _printed(output: io.StringIO) -> list[str]:
    printer = StackPrinter(output, BANNER)
    printer.width = len("first-answer")
    printer.write(_line("web", b"12:00:00 INFO    gunicorn.error: Listening\n"))
    printer.write(_line("first-answer", "Once upon a time\n"))
    printer.write(_line("first-answer", f"[stack] {UP}\n"))
    return output.getvalue().splitlines()


def test_lines_keep_their_process_name_and_the_banner_follows_the_first_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    lines = _printed(io.StringIO())
    assert lines[:3] == [
        "web          | 12:00:00 INFO    gunicorn.error: Listening",
        "first-answer | Once upon a time",
        f"first-answer | [stack] {UP}",
    ]
    assert "OllamaMax is up" in lines[3]
    assert any("admin@example.com / secret" in line for line in lines[4:])
    assert not ANSI.search("\n".join(lines))  # not a terminal: no colour


def test_on_a_terminal_the_first_answer_is_bold_and_names_are_coloured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    lines = _printed(Terminal())
    assert lines[0].startswith("\033[36mweb")
    assert "\033[1mOnce upon a time\033[0m" in lines[1]
    assert "\033[1m" not in lines[0]  # other processes' lines stay plain
    assert ANSI.sub("", lines[1]) == "first-answer | Once upon a time"


@pytest.mark.parametrize("unicode", [True, False])
def test_the_frame_is_square(unicode: bool) -> None:
    box = framed("OllamaMax is up", [*BANNER, "x" * 60], unicode=unicode).splitlines()
    assert len({len(row) for row in box}) == 1
    assert "OllamaMax is up" in box[0]
    assert box[1].startswith(("│ API", "| API"))
