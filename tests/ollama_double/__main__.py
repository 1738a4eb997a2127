"""`python -m tests.ollama_double --port 11434 --models llama3.2,qwen3:8b`"""

from __future__ import annotations

import argparse

from tests.ollama_double.server import OllamaDouble


def main() -> None:
    parser = argparse.ArgumentParser(description="A protocol-faithful Ollama double.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--models", default="llama3.2:latest", help="comma-separated names")
    args = parser.parse_args()
    server = OllamaDouble((args.host, args.port), [m for m in args.models.split(",") if m])
    print(f"ollama double on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
