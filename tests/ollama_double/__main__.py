"""`python -m tests.ollama_double --port 11434 --models llama3.2,qwen3:8b`

`--load-delay-s 3 --loaded llama3.2` makes it load models as Ollama does: the first request
for a model not in memory takes 3 s more (its load_duration says so), `--loaded` names the
models in memory at start, and /api/ps lists what is loaded until its keep_alive runs out."""

from __future__ import annotations

import argparse

from tests.ollama_double.server import OllamaDouble


def main() -> None:
    parser = argparse.ArgumentParser(description="A protocol-faithful Ollama double.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--models", default="llama3.2:latest", help="comma-separated names")
    parser.add_argument(
        "--load-delay-s", type=float, default=0.0, help="seconds to load a model not in memory"
    )
    parser.add_argument("--loaded", default="", help="comma-separated models in memory at start")
    parser.add_argument(
        "--size-vram", type=int, default=None, help="GPU bytes a loaded model takes (/api/ps)"
    )
    args = parser.parse_args()
    server = OllamaDouble((args.host, args.port), [m for m in args.models.split(",") if m])
    knobs: dict[str, object] = {"load_delay_s": args.load_delay_s}
    if args.loaded:
        knobs["loaded"] = [m for m in args.loaded.split(",") if m]
    if args.size_vram is not None:
        knobs["size_vram"] = args.size_vram
    server.state.configure(knobs)
    print(f"ollama double on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
