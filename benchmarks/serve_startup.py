"""Time vLLM start-up (process launch to /health OK) and a first request, per zoo family.

    .venv/bin/python benchmarks/serve_startup.py [--family F ...] [--dtype float32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness.serving.vllm import VLLMServer, complete
from harness.standins.zoo import ZOO, build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", action="append", choices=list(ZOO))
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    print(f"{'family':18s} {'startup_s':>10s} {'first_request_s':>16s}")
    for family in args.family or list(ZOO):
        model_dir = build_model(family, root / family)
        started = time.monotonic()
        with VLLMServer(model_dir, served_model_name=family, dtype=args.dtype, max_model_len=512,
                        log_path=root / f"{family}.log") as server:
            ready = time.monotonic()
            complete(server.base_url, family, "Hello", max_tokens=8)
            answered = time.monotonic()
        print(f"{family:18s} {ready - started:10.1f} {answered - ready:16.2f}", flush=True)


if __name__ == "__main__":
    main()
