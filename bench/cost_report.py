"""cost.md from the saved cost-<label>.json files: one column per path and caller count, one
row per figure; with both cost-before.json and cost-after.json, each cell reads
"before -> after".

    .venv/bin/python -m bench.cost_report [bench/results]
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from bench.speed_probe import REFERENCE_MS
from bench.stack import RESULTS

LABELS = ("before", "after")
Figure = Callable[[dict[str, Any]], float | str]


def redis_requests(b: dict[str, Any]) -> float | str:
    """Socket reads per job; runs before this figure existed say so."""
    return float(b["per_job"].get("redis_requests", float("nan")))


def socket_resumes(b: dict[str, Any]) -> float | str:
    """WebSockets the REST jobs opened again (closed for being too slow or by a shutdown;
    the doors have none); "-" for a run from before this figure existed."""
    return cast(float | str, b.get("socket_resumes", "-"))


def at_reference(b: dict[str, Any]) -> float:
    """OllamaMax's CPU per job at the speed probe's reference speed (bench/speed_probe.py);
    NaN ("n/a") for a run from before the probe."""
    value = b.get("ollamamax_ms_per_job_at_reference")
    return math.nan if value is None else float(value)


def probe_ms(b: dict[str, Any]) -> float:
    value = b["machine_during"].get("speed_probe_ms")
    return math.nan if value is None else float(value)


ROWS: list[tuple[str, Figure | None, int]] = [
    ("jobs measured", lambda b: b["jobs"], -1),
    ("errors", lambda b: b["errors"], -1),
    ("WebSockets resumed (?after=)", socket_resumes, -1),
    ("jobs/s", lambda b: b["jobs_per_s"], 1),
    ("**CPU ms per job**", None, 0),
    ("web: gunicorn master", lambda b: b["cpu_ms_per_job"]["web master"], 2),
    ("web: gunicorn worker(s)", lambda b: b["cpu_ms_per_job"]["web workers"], 2),
    ("worker (Celery, all threads)", lambda b: b["cpu_ms_per_job"]["worker"], 2),
    ("beat", lambda b: b["cpu_ms_per_job"]["beat"], 2),
    ("PostgreSQL (whole cluster)", lambda b: b["cpu_ms_per_job"]["postgres"], 2),
    ("redis-server", lambda b: b["cpu_ms_per_job"]["redis-server"], 2),
    ("**OllamaMax total**", lambda b: b["ollamamax_ms_per_job"], 1),
    (f"OllamaMax total at reference speed (probe {REFERENCE_MS:g} ms)", at_reference, 1),
    ("apart: the double", lambda b: b["apart_ms_per_job"]["double"], 2),
    ("apart: load generator", lambda b: b["apart_ms_per_job"]["load generator"], 2),
    ("**time to first token, ms**", None, 0),
    ("through OllamaMax p50", lambda b: b["ttft_ms"]["through"]["p50"], 1),
    ("double directly p50", lambda b: b["ttft_ms"]["direct"]["p50"], 1),
    ("**added p50**", lambda b: b["ttft_ms"]["added"]["p50"], 1),
    ("through OllamaMax p99", lambda b: b["ttft_ms"]["through"]["p99"], 1),
    ("double directly p99", lambda b: b["ttft_ms"]["direct"]["p99"], 1),
    ("**added p99**", lambda b: b["ttft_ms"]["added"]["p99"], 1),
    ("**per job**", None, 0),
    ("SQL transactions", lambda b: b["per_job"]["transactions"], 2),
    ("SQL statements", lambda b: b["per_job"]["statements"], 2),
    ("new PostgreSQL connections", lambda b: b["per_job"]["new_connections"], 3),
    (
        "Redis commands (commandstats: scripts' own included)",
        lambda b: b["per_job"]["redis_commands"],
        1,
    ),
    ("Redis requests (socket reads: a pipeline is one)", redis_requests, 1),
    ("**the machine meanwhile**", None, 0),
    ("load average, 1 min", lambda b: b["machine_during"]["load_1m"], 0),
    ("others' CPU, % of the machine", lambda b: b["machine"]["others_share"] * 100, 0),
    ("CPU stolen by the hypervisor, core-s", lambda b: b["machine"]["steal_core_s"], 1),
    ("speed probe, ms per fixed work (higher: slower host)", probe_ms, 1),
]


def load(folder: Path, also: str | None = None) -> dict[str, dict[str, Any]]:
    """The before and after runs in `folder`, and the run labelled `also` if it is neither
    (a run kept under a name of its own is reported alone rather than not at all)."""
    found = {}
    for label in (*LABELS, *([also] if also and also not in LABELS else [])):
        path = folder / f"cost-{label}.json"
        if path.exists():
            found[label] = json.loads(path.read_text())
    return found


def columns(runs: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    for run in runs.values():
        for b in run["batches"]:
            if (b["path"], b["callers"]) not in keys:
                keys.append((b["path"], b["callers"]))
    return keys


def cell(runs: dict[str, dict[str, Any]], key: tuple[str, int], figure: Figure, digits: int) -> str:
    """One figure of one column, per run: the median over its rounds (counts: the sum;
    text: each round's, separated by ';')."""
    values = []
    for run in runs.values():
        found = [figure(b) for b in run["batches"] if (b["path"], b["callers"]) == key]
        if not found:
            values.append("n/a")
        elif any(isinstance(value, str) for value in found):
            values.append("; ".join(str(value) for value in found))
        elif digits < 0:
            values.append(f"{sum(cast(list[float], found)):.0f}")
        else:
            middle = statistics.median(cast(list[float], found))
            values.append("n/a" if math.isnan(middle) else f"{middle:.{digits}f}")
    return " → ".join(values)


def spread_row(runs: dict[str, dict[str, Any]], keys: list[tuple[str, int]]) -> str:
    cells = []
    for key in keys:
        ranges = []
        for run in runs.values():
            totals = [
                b["ollamamax_ms_per_job"]
                for b in run["batches"]
                if (b["path"], b["callers"]) == key
            ]
            ranges.append(f"{min(totals):.1f} to {max(totals):.1f}" if totals else "n/a")
        cells.append(" → ".join(ranges))
    return "| OllamaMax total, lowest to highest round | " + " | ".join(cells) + " |"


def title(runs: dict[str, dict[str, Any]], key: tuple[str, int]) -> str:
    path, callers = key
    for run in runs.values():
        for b in run["batches"]:
            if (b["path"], b["callers"]) == key:
                return f"{b['title']}, {callers} caller{'s' if callers > 1 else ''}"
    return f"{path}, {callers}"


def table(runs: dict[str, dict[str, Any]]) -> list[str]:
    keys = columns(runs)
    lines = [
        "| figure | " + " | ".join(title(runs, key) for key in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    rounds = max(run["meta"]["plan"].get("rounds", 1) for run in runs.values())
    for name, figure, digits in ROWS:
        if figure is not None and name == "**OllamaMax total**" and rounds > 1:
            lines.append(
                f"| {name} (median of rounds) | "
                + " | ".join(cell(runs, k, figure, digits) for k in keys)
                + " |"
            )
            lines.append(spread_row(runs, keys))
            continue
        if figure is None:
            lines.append(f"| {name} |" + " |" * len(keys))
        else:
            lines.append(
                f"| {name} | " + " | ".join(cell(runs, k, figure, digits) for k in keys) + " |"
            )
    return lines


def statement_time(b: dict[str, Any]) -> list[str]:
    """PostgreSQL's planning and execution time per job (runs before track_planning have
    none)."""
    per_job = b["per_job"]
    if "statement_plan_ms" not in per_job:
        return []
    return [
        f"PostgreSQL's time in them per job: {per_job['statement_plan_ms']:.2f} ms planning,"
        f" {per_job['statement_exec_ms']:.2f} ms executing (wall time in the backends, which"
        " includes waits on locks).",
        "",
    ]


def where_from(label: str, run: dict[str, Any]) -> list[str]:
    """Per path at its largest caller count: the statements and Redis commands per job."""
    lines = []
    biggest: dict[str, dict[str, Any]] = {}
    for b in run["batches"]:
        if b["callers"] >= biggest.get(b["path"], {"callers": 0})["callers"]:
            biggest[b["path"]] = b
    for b in biggest.values():
        lines += [
            f"**{label}: {b['title']}, {b['callers']} callers** — per job:"
            f" {b['per_job']['statements']:.2f} statements,"
            f" {b['per_job']['redis_commands']:.1f} Redis commands",
            "",
            *statement_time(b),
            "| calls/job | plan ms/job | exec ms/job | statement (pg_stat_statements, normalized) |",
            "|---:|---:|---:|---|",
        ]
        listed = {text: calls for text, calls in b["statements_by_text"].items() if calls >= 0.05}
        times = b.get("statement_ms_by_text", {})
        for text, calls in listed.items():
            short = " ".join(text.split())
            short = short if len(short) <= 110 else short[:107] + "..."
            spent = times.get(text)
            plan, run = (f"{spent['plan']:.2f}", f"{spent['exec']:.2f}") if spent else ("", "")
            lines.append(f"| {calls:.2f} | {plan} | {run} | `{short.replace('|', '¦')}` |")
        # The rest: rare statements, and beyond the top 15 (an IN list of each length is a
        # text of its own in pg_stat_statements: the batched dispatch mark, say).
        texts = len(b["statements_by_text"]) - len(listed)
        texts += b.get("statements_elsewhere", {"texts": 0})["texts"]
        if texts:
            rest = b["per_job"]["statements"] - sum(listed.values())
            lines.append(f"| {rest:.2f} | | | {texts} other texts |")
        commands = ", ".join(
            f"{cmd} {calls:.2f}" for cmd, calls in b["redis_by_command"].items() if calls >= 0.05
        )
        lines += ["", f"Redis commands per job: {commands}.", ""]
    return lines


def redis_sources(label: str, run: dict[str, Any]) -> list[str]:
    """The MONITOR pass: Redis commands per job by the process that sent them."""
    lines = []
    for path, found in run.get("redis_sources", {}).items():
        titles = [b["title"] for b in run["batches"] if b["path"] == path]
        lines += [
            f"**{label}: {titles[0] if titles else path}**, {found['jobs']} jobs at"
            f" {found['callers']} callers under MONITOR: {found['monitor_per_job']:.1f} commands"
            f" per job seen (INFO commandstats over the same jobs:"
            f" {found['commandstats_per_job']:.1f}; the idle stack's background is about"
            f" {found['idle_per_job']:.1f} per job of it)",
            "",
            "| sender | sent | run inside its scripts | sent: commands | inside scripts |",
            "|---|---:|---:|---|---|",
        ]
        for role, hows in found["by_role"].items():
            sent, inside = hows["sent"], hows["in scripts"]
            lines.append(
                f"| {role} | {sum(sent.values()):.2f} | {sum(inside.values()):.2f}"
                f" | {breakdown(sent)} | {breakdown(inside)} |"
            )
        lines.append("")
    return lines


def breakdown(calls: dict[str, float]) -> str:
    return ", ".join(f"{cmd} {n:.2f}" for cmd, n in calls.items() if n >= 0.01) or "-"


def header(label: str, run: dict[str, Any]) -> list[str]:
    meta = run["meta"]
    idle = meta["idle"]
    cpu_idle = ", ".join(f"{role} {ms:.1f}" for role, ms in idle["cpu_ms_per_s"].items() if ms)
    dirty = " (with uncommitted changes)" if meta["dirty"] else ""
    return [
        f"- **{label}**: `{meta['command']}` at commit {meta['commit']}{dirty}, {meta['started']},"
        f" {meta['minutes']:.1f} min; {meta['machine']}; {meta['postgres']}, Redis"
        f" {meta['redis']}. Idle stack per second: {idle['transactions_per_s']:.2f}"
        f" transactions, {idle['statements_per_s']:.1f} statements,"
        f" {idle['redis_commands_per_s']:.1f} Redis commands, CPU ms: {cpu_idle}."
        + (
            f" pg_stat_statements evicted {meta['statements_evicted']} entries."
            if meta["statements_evicted"]
            else ""
        ),
    ]


def render(runs: dict[str, dict[str, Any]]) -> str:
    any_run = next(iter(runs.values()))
    settings = any_run["meta"]["settings"]
    lines = [
        "# Cost per job (`python -m bench.cost`)",
        "",
        "One streamed job of "
        + settings["double"]
        + " from the Ollama double, per path, at each caller count. Stack: gunicorn with"
        f" WEB_CONCURRENCY={settings['WEB_CONCURRENCY']} (gevent), one worker with"
        f" --slots {settings['worker slots']}, Celery beat, LOG_LEVEL INFO, the rate limiter on"
        f" ({settings['RATELIMIT_DEFAULT']}); its own PostgreSQL 15 cluster and redis-server."
        " CPU from /proc per process before and after each batch, divided by the jobs; the"
        " double and the load generator are not in the total. Time to first token: from the"
        " call to the first token (token frame, content chunk), minus the double called"
        " directly with the same client at the same concurrency just before (the `ollama`"
        " client for REST), percentile by percentile. See docs/benchmarks.md.",
        "",
        *[line for label, run in runs.items() for line in header(label, run)],
        "",
    ]
    if len(runs) > 1:
        lines += ["Each cell: " + " → ".join(runs) + ".", ""]
    lines += table(runs)
    lines += ["", "## Where the statements and Redis commands come from", ""]
    for label, run in runs.items():
        lines += where_from(label, run)
    if any(run.get("redis_sources") for run in runs.values()):
        lines += [
            "## Redis commands by sender",
            "",
            "INFO commandstats counts the commands a script runs as well as the EVALSHA that"
            " ran it. A pass after the measured batches (not timed: MONITOR slows Redis"
            " down) attributes each command to the process whose socket sent it, and each"
            " command run inside a script to the sender of that script.",
            "",
        ]
        for label, run in runs.items():
            lines += redis_sources(label, run)
    return "\n".join(lines) + "\n"


def repeats(folder: Path, runs: dict[str, dict[str, Any]]) -> list[str]:
    """Other runs of the same code kept as cost-<label>-<name>.json: how far a figure moves
    between runs on this machine, to read a before -> after difference against."""
    found = {
        path.stem.removeprefix("cost-"): json.loads(path.read_text())
        for label in LABELS
        for path in sorted(folder.glob(f"cost-{label}-*.json"))
    }
    if not found:
        return []
    keys = columns(runs)
    lines = [
        "## Repeat runs",
        "",
        "OllamaMax total CPU ms per job (others' CPU, % of the machine; the total at the"
        " speed probe's reference speed, where measured) in each kept run, the reported one"
        " first: the spread is the noise a difference must exceed.",
        "",
        "| run | " + " | ".join(title(runs, key) for key in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, run in {**runs, **found}.items():
        cells = []
        for key in keys:
            hits = [b for b in run["batches"] if (b["path"], b["callers"]) == key]
            cells.append("; ".join(_repeat_cell(b) for b in hits) or "n/a")
        lines.append(f"| {name} ({run['meta']['started']}) | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _repeat_cell(b: dict[str, Any]) -> str:
    text = f"{b['ollamamax_ms_per_job']:.1f} ({b['machine']['others_share'] * 100:.0f}"
    adjusted = at_reference(b)
    return text + (")" if math.isnan(adjusted) else f"; {adjusted:.1f})")


def write(folder: Path, label: str | None = None) -> Path:
    path = folder / "cost.md"
    runs = load(folder, label)
    path.write_text(render(runs) + "\n".join(["", *repeats(folder, runs)]))
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS).read_text())
