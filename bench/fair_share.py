"""Fair share (docs/pipeline.md, "Fair share") as a caller feels it: one user floods a model
with jobs, another submits a few while the flood waits; the other user's queue wait (the
database's started_at - queued_at) with fair share on and off, on the same stack otherwise.

    .venv/bin/python -m bench.fair_share [--flood 200] [--few 10] [--slots 2]

Writes bench/results/fair_share.md and fair_share.json. Not part of `python -m bench`.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from sqlalchemy import create_engine, text

from bench.stack import RESULTS, Stack, percentile, post_json, progress


def _submit(stack: Stack, token: str) -> str:
    body = {"model": "llama3.2", "prompt": "fair?", "options": {"num_predict": 8}}
    return str(post_json(f"{stack.base}/api/v1/inference/generate", body, token)["id"])


def _waits(database_url: str, ids: list[str]) -> dict[str, float | None]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT id::text, status, extract(epoch FROM started_at - queued_at)"
                    " FROM inference_requests WHERE id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": ids},
            ).all()
    finally:
        engine.dispose()
    return {row[0]: float(row[2]) if row[1] == "completed" else None for row in rows}


def run_once(fair: bool, *, flood: int, few: int, slots: int, gap_s: float) -> dict[str, Any]:
    stack = Stack(slots=slots, FAIR_SHARE="true" if fair else "false")
    try:
        stack.start()
        stack.start_worker()
        stack.configure_double(first_token_delay_s=0.0, token_delay_s=0.01, default_tokens=8)
        flooder, other = stack.token(), stack.token()
        progress(f"fair share {'on' if fair else 'off'}: {flood} jobs from one user")
        flood_ids = [_submit(stack, flooder) for _ in range(flood)]
        few_ids = []
        for _ in range(few):
            few_ids.append(_submit(stack, other))
            time.sleep(gap_s)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            waits = _waits(stack.database_url, flood_ids + few_ids)
            if sum(value is not None for value in waits.values()) == flood + few:
                break
            time.sleep(1)
        else:
            raise TimeoutError("the jobs did not all complete within 10 minutes")
    finally:
        stack.stop()
    other_waits = [waits[i] or 0.0 for i in few_ids]
    flood_waits = [waits[i] or 0.0 for i in flood_ids]
    return {
        "fair_share": fair,
        "other_p50_s": round(percentile(other_waits, 50), 3),
        "other_p95_s": round(percentile(other_waits, 95), 3),
        "flood_p50_s": round(percentile(flood_waits, 50), 3),
        "flood_p95_s": round(percentile(flood_waits, 95), 3),
    }


def measure(flood: int = 200, few: int = 10, slots: int = 2, gap_s: float = 0.3) -> dict[str, Any]:
    runs = [
        run_once(fair, flood=flood, few=few, slots=slots, gap_s=gap_s) for fair in (False, True)
    ]
    return {"flood": flood, "few": few, "slots": slots, "gap_s": gap_s, "runs": runs}


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Fair share: one user floods, another waits",
        "",
        f"One user submits {result['flood']} jobs at once to one model on a worker with "
        f"{result['slots']} slots (the double: 8 tokens, 10 ms apart); right after, another "
        f"user submits {result['few']} jobs, {result['gap_s']} s apart. Queue wait: the "
        "database's started_at - queued_at of each job. `python -m bench.fair_share`.",
        "",
        "| Fair share | other user p50 | other user p95 | flooder p50 | flooder p95 |",
        "|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {'on' if run['fair_share'] else 'off'} | {run['other_p50_s']} s "
            f"| {run['other_p95_s']} s | {run['flood_p50_s']} s | {run['flood_p95_s']} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--few", type=int, default=10)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--gap-s", type=float, default=0.3)
    args = parser.parse_args()
    result = measure(flood=args.flood, few=args.few, slots=args.slots, gap_s=args.gap_s)
    (RESULTS / "fair_share.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "fair_share.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
