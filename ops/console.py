"""What `make run` shows: every process's lines under its name, the first answer in bold,
and a framed banner at the start and again once the stack is up, so the screen the stack
settles on says how to reach it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

from honcho.printer import Message, Printer

from config.logging import wants_colour
from ops.first_answer import UP

FIRST_ANSWER = "first-answer"  # the process whose lines are the demo
_BOLD = "1"
_FRAME = "1;36"  # bold cyan


def paint(code: str, text: str, colour: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if colour else text


def framed(title: str, lines: Sequence[str], colour: bool = False, unicode: bool = True) -> str:
    """`lines` in a box titled `title`: Unicode box drawing, or ASCII for other encodings."""
    h, v, corners = ("─", "│", "╭╮╰╯") if unicode else ("-", "|", "++++")
    width = max(len(title) + 2, *(len(line) for line in lines))
    top = f"{corners[0]}{h} {title} {h * (width - len(title) - 2)}{h}{corners[1]}"
    bottom = f"{corners[2]}{h * (width + 2)}{corners[3]}"
    rows = [paint(_FRAME, top, colour)]
    rows += [
        f"{paint(_FRAME, v, colour)} {line.ljust(width)} {paint(_FRAME, v, colour)}"
        for line in lines
    ]
    rows.append(paint(_FRAME, bottom, colour))
    return "\n".join(rows)


def _speaks_unicode(output: Any) -> bool:
    return "utf" in (getattr(output, "encoding", None) or "").lower()


class StackPrinter(Printer):
    """honcho's printer, for people: the process name in its colour but not honcho's clock
    (our log lines carry their own), the first answer in bold, the banner after it."""

    def __init__(self, output: TextIO, banner: Sequence[str]) -> None:
        super().__init__(output)
        self.banner = banner
        self.colour_on = wants_colour(output)
        self.unicode = _speaks_unicode(output)

    def show_banner(self, title: str) -> None:
        print(
            framed(title, self.banner, self.colour_on, self.unicode), file=self.output, flush=True
        )

    def write(self, message: Message) -> None:
        if message.type != "line":
            raise RuntimeError('Printer can only process messages of type "line"')
        data = message.data
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        prefix = f"{(message.name or '').ljust(self.width)} | "
        if message.colour:
            prefix = paint(message.colour, prefix, self.colour_on)
        for line in text.splitlines():
            demo = message.name == FIRST_ANSWER
            shown = paint(_BOLD, line, self.colour_on and demo)
            print(prefix + shown, file=self.output, flush=True)
            if demo and line.endswith(UP):
                self.show_banner("OllamaMax is up")
