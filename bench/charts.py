"""The report's figure (matplotlib, Agg: no display needed): latency percentiles and
throughput, OllamaMax next to its baseline; tokens per second on the real model; RSS over
the soak. A panel whose part did not run says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display here
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

OURS, DIRECT = "#d95f02", "#1b9e77"
PERCENTILES = ("p50", "p95", "p99")


def draw(r: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(2, 3, figsize=(18, 10))
    doors = r.get("front_doors", {}).get("doors")
    panel(axes[0][0], doors, lambda a: door_percentiles(a, doors, "ttft", "TTFT"))
    panel(axes[0][1], doors, lambda a: door_percentiles(a, doors, "total", "total latency"))
    panel(axes[0][2], doors, lambda a: door_throughput(a, doors))
    panel(axes[1][0], r.get("real_model"), lambda a: real_model(a, r["real_model"]))
    panel(axes[1][1], r.get("pipeline") or r.get("relay"), lambda a: baselines(a, r))
    panel(axes[1][2], r.get("soak"), lambda a: soak(a, r["soak"]))
    title = "OllamaMax benchmark report"
    if r["meta"]["quick"]:
        title += " (QUICK smoke run)"
    figure.suptitle(f"{title}: {r['meta']['started']}, {r['meta']['machine']}")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def panel(axes: Axes, data: Any, draw_it: Any) -> None:
    if data:
        draw_it(axes)
    else:
        axes.text(0.5, 0.5, "not run", ha="center", va="center")
        axes.set_axis_off()


def paired_bars(
    axes: Axes, labels: list[str], ours: list[float], direct: list[float], direct_label: str
) -> None:
    positions = range(len(labels))
    width = 0.4
    axes.bar([x - width / 2 for x in positions], direct, width, label=direct_label, color=DIRECT)
    axes.bar([x + width / 2 for x in positions], ours, width, label="through OllamaMax", color=OURS)
    axes.set_xticks(list(positions), labels, rotation=30, ha="right", fontsize=8)
    axes.legend(fontsize=8)


def door_percentiles(axes: Axes, doors: dict[str, Any], key: str, what: str) -> None:
    labels, ours, direct = [], [], []
    for door, sides in doors.items():
        for p in PERCENTILES:
            labels.append(f"{door.split(' ', 1)[1]} {p}")
            ours.append(sides["ours"][key][p])
            direct.append(sides["direct"][key][p])
    paired_bars(axes, labels, ours, direct, "engine directly")
    axes.set_ylabel("ms")
    axes.set_title(f"Front doors: {what} (official clients, streamed)")


def door_throughput(axes: Axes, doors: dict[str, Any]) -> None:
    labels = list(doors)
    paired_bars(
        axes,
        labels,
        [doors[d]["ours"]["rps"] for d in labels],
        [doors[d]["direct"]["rps"] for d in labels],
        "engine directly",
    )
    axes.legend(fontsize=8, loc="lower right")
    axes.set_ylabel("requests/s at fixed concurrency")
    axes.set_title("Front doors: throughput")


def real_model(axes: Axes, m: dict[str, Any]) -> None:
    arms = list(m["runs_by_arm"])
    for x, arm in enumerate(arms):
        values = [run["tokens_per_s"] for run in m["runs_by_arm"][arm]]
        color = DIRECT if arm == "direct" else OURS
        axes.scatter([x] * len(values), values, color=color, alpha=0.6)
        median = m["medians"][arm]["tokens_per_s"]
        axes.hlines(median, x - 0.3, x + 0.3, color=color, linewidth=2)
        axes.annotate(f"{median:.1f} ({m['ratio'][arm]:.0%})", (x + 0.32, median), fontsize=8)
    goal = 0.95 * m["medians"]["direct"]["tokens_per_s"]
    axes.axhline(goal, linestyle="--", color="grey", linewidth=1, label="goal: 95% of direct")
    axes.set_xticks(range(len(arms)), ["llama.cpp direct", "OllamaMax openai", "OllamaMax REST+WS"])
    axes.set_xlim(-0.5, len(arms) - 0.2)
    axes.set_ylabel("tokens/s, end to end (runs; bar = median)")
    axes.set_title(f"Real model (Gemma 3 270M, CPU), {m['max_tokens']} tokens")
    axes.legend(fontsize=8)


def baselines(axes: Axes, r: dict[str, Any]) -> None:
    labels, ours, direct = [], [], []
    if "pipeline" in r:
        p = r["pipeline"]
        for q in PERCENTILES:
            labels.append(f"first token {q}")
            ours.append(p["total"][q])
            direct.append(p["engine"][q])
    if "relay" in r:
        x = r["relay"]
        for q in PERCENTILES:
            labels.append(f"relay event {q}")
            ours.append(x[q])
            direct.append(x["direct"][q])
    paired_bars(axes, labels, ours, direct, "baseline: engine / Redis directly")
    axes.set_yscale("log")
    axes.set_ylabel("ms (log)")
    axes.set_title("Pipeline first token and relay event latency")


def soak(axes: Axes, s: dict[str, Any]) -> None:
    for name, proc in s["processes"].items():
        minutes = [t / 60 for t, _ in proc["samples"]]
        axes.plot(minutes, [mb for _, mb in proc["samples"]], marker=".", label=name)
    axes.axhline(150, linestyle="--", color="grey", linewidth=1, label="web goal 150 MB")
    axes.axhline(200, linestyle=":", color="grey", linewidth=1, label="worker goal 200 MB")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("minutes")
    axes.set_ylabel("RSS, MB")
    axes.set_title(
        f"Soak: RSS under {s['jobs_per_s']:g} jobs/s + {s['door_calls_per_s']:g} calls/s"
    )
    axes.legend(fontsize=8)
