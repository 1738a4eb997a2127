"""The benchmark report: every figure next to its baseline from the same run, the goal, and
PASS or MISS; one figure of charts.

    .venv/bin/python -m bench.report [bench/results/report.json]

`python -m bench` measures and calls `write()`; run alone, this module renders the markdown
and the PNG again from a saved report.json (e.g. after a change of layout).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench import pipeline, relay
from bench.stack import RESULTS

PART_TITLES = {
    "pipeline": "Pipeline: submission and time to first token",
    "relay": "Relay: sockets, token events, latency",
    "front_doors": "Front doors: official clients through OllamaMax vs the engine directly",
    "real_model": "Real model: end-to-end tokens per second",
    "soak": "Soak: memory under steady mixed load",
}
FLAT_MB_PER_MIN = 0.5  # a slope under this (after warm-up) counts as flat
WEB_RSS_MB, WORKER_RSS_MB = 150, 200
REAL_MODEL_RATIO = 0.95
SOCKETS = 1000


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**MISS**"


def goals(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, ours, baseline from the same run, goal, verdict) rows."""
    rows = []
    if "pipeline" in r:
        p = r["pipeline"]
        h, s = p["load"]["health"], p["load"]["submit"]
        rows += [
            (
                "submissions/s (POST /api/v1/inference/generate, JWT)",
                f"{s['rps']:.0f}/s",
                f"GET /health {h['rps']:.0f}/s",
                ">= 1000/s",
                verdict(s["rps"] >= 1000),
            ),
            (
                "submission p95 latency",
                f"{s['p95_ms']:.1f} ms",
                f"GET /health {h['p95_ms']:.1f} ms",
                "< 50 ms",
                verdict(s["p95_ms"] < 50),
            ),
            (
                f"time to first token added by the pipeline, p50 ({p['args']['streams']} streams)",
                f"{p['added']['p50']:.1f} ms",
                f"engine alone p50 {p['engine']['p50']:.1f} ms",
                "<= 10 ms",
                verdict(p["added"]["p50"] <= 10),
            ),
            (
                "time to first token added by the pipeline, p99",
                f"{p['added']['p99']:.1f} ms",
                f"engine alone p99 {p['engine']['p99']:.1f} ms",
                "<= 30 ms",
                verdict(p["added"]["p99"] <= 30),
            ),
        ]
    if "relay" in r:
        x = r["relay"]
        open_sockets = x["sockets"] - (x["args"]["idle"] - x["idle_still_open"])
        offered = x["args"]["streams"] * x["args"]["rate"]
        rows += [
            (
                "WebSockets held by one web process",
                f"{open_sockets}",
                "n/a",
                f">= {SOCKETS}",
                verdict(open_sockets >= SOCKETS)
                if x["sockets"] >= SOCKETS
                else f"not tested ({x['sockets']} opened)",
            ),
            (
                "token events/s delivered",
                f"{x['events_per_s']:.0f}/s",
                f"offered {offered}/s",
                ">= 10,000/s",
                verdict(x["events_per_s"] >= 10_000)
                if offered >= 10_000
                else f"not tested ({offered}/s offered)",
            ),
            (
                "publish -> client receipt p99",
                f"{x['p99']:.1f} ms",
                f"Redis pub/sub direct p99 {x['direct']['p99']:.1f} ms",
                "< 50 ms",
                verdict(x["p99"] < 50),
            ),
        ]
    if "real_model" in r:
        m = r["real_model"]
        direct = m["medians"]["direct"]["tokens_per_s"]
        for arm, label in (("openai", "openai client, /v1/completions"), ("rest+ws", "REST + WS")):
            ours = m["medians"][arm]["tokens_per_s"]
            rows.append(
                (
                    f"real model tok/s end to end ({label}), median",
                    f"{ours:.1f} ({m['ratio'][arm]:.1%})",
                    f"llama.cpp direct {direct:.1f}",
                    ">= 95% of direct",
                    verdict(m["ratio"][arm] >= REAL_MODEL_RATIO),
                )
            )
    if "soak" in r:
        for name, proc in r["soak"]["processes"].items():
            ceiling = WORKER_RSS_MB if proc["kind"] == "worker" else WEB_RSS_MB
            rows += [
                (
                    f"{name.split(' (')[0]} RSS, max over the soak",
                    f"{proc['max_mb']:.1f} MB",
                    f"at start {proc['start_mb']:.1f} MB",
                    f"< {ceiling} MB",
                    verdict(proc["max_mb"] < ceiling),
                ),
                (
                    f"{name.split(' (')[0]} RSS slope after warm-up",
                    f"{proc['slope_mb_per_min']:+.2f} MB/min",
                    "n/a",
                    f"flat (< {FLAT_MB_PER_MIN} MB/min)",
                    verdict(proc["slope_mb_per_min"] < FLAT_MB_PER_MIN),
                ),
            ]
    return rows


def demote(markdown: str) -> str:
    """A standalone benchmark's report as a subsection of this one."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.split("\n"))


def front_doors_section(f: dict[str, Any]) -> str:
    lines = [
        f"{f['concurrency']} concurrent callers in a closed loop, each answer {f['tokens']} tokens"
        f" (the double: first token after {f['engine']['first_token_delay_s'] * 1000:.0f} ms,"
        f" then one every {f['engine']['token_delay_s'] * 1000:.0f} ms); direct and through"
        f" phases alternate, {f['rounds']} x {f['seconds']:g} s each. Times in ms, from the"
        " call to the first content chunk (TTFT) and to the end of the stream.",
        "",
        "| door (client) | side | req/s | TTFT p50 | p95 | p99 | total p50 | p95 | p99 | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for door, sides in f["doors"].items():
        for side in ("direct", "ours"):
            x = sides[side]
            t, a = x["ttft"], x["total"]
            label = "engine directly" if side == "direct" else "through OllamaMax"
            lines.append(
                f"| {door} | {label} | {x['rps']:.1f} | {t['p50']:.1f} | {t['p95']:.1f}"
                f" | {t['p99']:.1f} | {a['p50']:.1f} | {a['p95']:.1f} | {a['p99']:.1f}"
                f" | {x['errors']} |"
            )
    lines += [
        "",
        "Ratios, through OllamaMax / directly (no goal was set for the doors):",
        "",
        "| door | throughput | TTFT p50 | TTFT p99 | total p50 | total p99 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for door, sides in f["doors"].items():
        d, o = sides["direct"], sides["ours"]
        lines.append(
            f"| {door} | {o['rps'] / d['rps']:.0%} | {o['ttft']['p50'] / d['ttft']['p50']:.1f}x"
            f" | {o['ttft']['p99'] / d['ttft']['p99']:.1f}x"
            f" | {o['total']['p50'] / d['total']['p50']:.2f}x"
            f" | {o['total']['p99'] / d['total']['p99']:.2f}x |"
        )
    errors = [
        e
        for sides in f["doors"].values()
        for side in ("direct", "ours")
        for e in sides[side]["first_errors"]
    ]
    if errors:
        lines += ["", "First errors: " + "; ".join(f"`{e}`" for e in errors[:3])]
    return "\n".join(lines)


def real_model_section(m: dict[str, Any]) -> str:
    lines = [
        f"llama.cpp server (`python -m workers.llama_server`, {m['threads']} thread(s)) on"
        f" Gemma 3 270M Q4_K_M, CPU; the worker fronts it with one slot. Prompt"
        f" {m['prompt']!r}, max {m['max_tokens']} tokens, temperature 0 (every arm generates"
        f" the same text); {m['runs']} runs per arm, arms interleaved and rotated, one warm-up"
        " each. tok/s = completion tokens / wall time from the call to the end of the stream.",
        "",
        "| arm | median tokens | median tok/s | of direct | median TTFT ms | median decode tok/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "direct": "openai client -> llama.cpp directly",
        "openai": "openai client -> OllamaMax /v1/completions",
        "rest+ws": "REST submit + WebSocket",
    }
    for arm, label in labels.items():
        x = m["medians"][arm]
        lines.append(
            f"| {label} | {x['tokens']:.0f} | {x['tokens_per_s']:.1f} | {m['ratio'][arm]:.1%}"
            f" | {x['ttft_ms']:.0f} | {x['decode_per_s']:.1f} |"
        )
    lines += ["", "Every run, tok/s:", ""]
    for arm in labels:
        runs = ", ".join(f"{run['tokens_per_s']:.1f}" for run in m["runs_by_arm"][arm])
        lines.append(f"- {arm}: {runs}")
    return "\n".join(lines)


def soak_section(s: dict[str, Any]) -> str:
    lines = [
        f"{s['minutes']:g} minutes, open loop: {s['jobs_per_s']:g} native jobs/s (REST submit, a"
        f" WebSocket reader to the end) + {s['door_calls_per_s']:g} front-door call/s (ollama"
        f" /api/chat and openai /v1/chat/completions, alternating, streamed); {s['tokens']}"
        " tokens per answer on the double. VmRSS sampled every"
        f" {s['sample_s']:g} s; slope = least-squares fit after the first {s['warm_up_s']:.0f} s.",
        "",
        "| process | start MB | end MB | max MB | slope MB/min |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, p in s["processes"].items():
        lines.append(
            f"| {name} | {p['start_mb']:.1f} | {p['end_mb']:.1f} | {p['max_mb']:.1f}"
            f" | {p['slope_mb_per_min']:+.2f} |"
        )
    lines += [
        "",
        "| load | completed | errors | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, x in s["latency_ms"].items():
        lines.append(
            f"| {kind} | {s['requests'][kind]} | {s['errors'][kind]} | {x['p50']:.0f}"
            f" | {x['p95']:.0f} | {x['p99']:.0f} |"
        )
    if s["web_restarted"]:
        lines += ["", "**A gunicorn worker was replaced during the soak.**"]
    if s["first_errors"]:
        lines += ["", "First errors: " + "; ".join(f"`{e}`" for e in s["first_errors"])]
    return "\n".join(lines)


def neighbours(meta: dict[str, Any]) -> list[str]:
    """Lines on the CPU other work took from the machine during each part, if any."""
    lines = []
    for part, used in meta.get("neighbours", {}).items():
        share = used["core_seconds"] / used["wall_seconds"] if used["wall_seconds"] else 0.0
        if share >= 0.05:
            lines.append(
                f"- {part}: {used['core_seconds']:.0f} CPU-seconds over {used['wall_seconds']:.0f} s"
                f" ({share:.2f} cores), mostly {', '.join(used['busiest'])}"
            )
    if lines:
        lines = [
            "**The machine was shared:** other processes (neither this benchmark's nor"
            " PostgreSQL/Redis) used CPU during these parts, so latency and throughput figures"
            " there include their contention (baselines in the same phase saw it too):",
            "",
            *lines,
            "",
        ]
    notes = meta.get("notes", [])
    return [*lines, *notes, ""] if notes else lines


def render(r: dict[str, Any], png: str) -> str:
    meta = r["meta"]
    out = [
        "# Benchmark report"
        + (" (QUICK smoke run: durations cut, not for the record)" if meta["quick"] else ""),
        "",
        f"`{meta['command']}` on {meta['machine']}; commit {meta['commit']}"
        f"{' with local changes' if meta['dirty'] else ''}; {meta['started']}, {meta['minutes']:.0f} min.",
        "Every process (PostgreSQL, Redis, the engine, web, worker and the load generators) shares"
        " the same cores; each baseline is measured in the same run, on the same machine, with"
        " the same client. Load average (1 min) at the start -> end of each part: "
        + ", ".join(f"{part} {load}" for part, load in meta["load"].items())
        + ".",
        "",
        "## Goals",
        "",
        *neighbours(meta),
        "| figure | OllamaMax | baseline (same run) | goal | |",
        "|---|---:|---:|---|---|",
    ]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in goals(r)]
    out += ["", f"![latency, throughput and memory, ours vs direct]({png})", ""]
    for part, title in PART_TITLES.items():
        if part in r.get("failed", {}):
            out += [f"## {title}", "", f"**Failed:** `{r['failed'][part]}`", ""]
            continue
        if part not in r:
            continue
        out += [f"## {title}", ""]
        if part == "pipeline":
            out.append(demote(pipeline.render(r[part])).split("\n", 2)[2].strip())
        elif part == "relay":
            out.append(demote(relay.render(r[part])).split("\n", 2)[2].strip())
        elif part == "front_doors":
            out.append(front_doors_section(r[part]))
        elif part == "real_model":
            out.append(real_model_section(r[part]))
        elif part == "soak":
            out.append(soak_section(r[part]))
        out.append("")
    return "\n".join(out)


def write(r: dict[str, Any], out: Path) -> Path:
    """report.json, report.md and report.png in `out`; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(r, indent=1))
    from bench.charts import draw

    draw(r, out / "report.png")
    (out / "report.md").write_text(render(r, "report.png"))
    return out / "report.md"


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "report.json"
    print(write(json.loads(source.read_text()), source.parent))


if __name__ == "__main__":
    main()
