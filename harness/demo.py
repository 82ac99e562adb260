"""Offline demo until the sweep runner lands: build a zoo model, serve it, show completions.

    python -m harness.demo [--family qwen3_moe] [--work work/demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.serving import VLLMServer, chat, complete
from harness.zoo import ZOO, build_model

PROMPTS = ["The capital of France is", "def add(a, b):", "Natalia sold 48 clips"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen3_moe", choices=list(ZOO))
    parser.add_argument("--work", default="work/demo", help="where the model and server log go")
    args = parser.parse_args(argv)

    work = Path(args.work)
    model_dir = build_model(args.family, work / "zoo" / args.family)
    print(f"[demo] built tiny {args.family} model (random weights: expect gibberish) at {model_dir}")
    log = work / "logs" / f"vllm-{args.family}.log"
    print(f"[demo] starting vLLM (log: {log}) ...", flush=True)
    started = time.monotonic()
    with VLLMServer(model_dir, served_model_name=args.family, max_model_len=512, log_path=log) as server:
        print(f"[demo] server ready at {server.base_url} after {time.monotonic() - started:.1f} s")
        for prompt in PROMPTS:
            text = complete(server.base_url, args.family, prompt, max_tokens=12)["choices"][0]["text"]
            print(f"  completion  {prompt!r} -> {text!r}")
        reply = chat(server.base_url, args.family, "Write a haiku about autumn.", max_tokens=12)
        print(f"  chat        'Write a haiku about autumn.' -> {reply['choices'][0]['message']['content']!r}")
    print("[demo] server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
