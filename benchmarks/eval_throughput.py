"""Served-evaluation throughput against vLLM's offline `LLM.generate` on the same prompts.

The served side is the math task's own generation path (`chat_many` with the task's
prompt and settings) against `harness.serving.vllm.VLLMServer`; the offline side is
`vllm.LLM.generate` on the same chat-templated token ids. Both are greedy with the
same max_tokens and `ignore_eos`, so both generate exactly the same number of
tokens; the ratio (served tok/s / offline tok/s) is what the HTTP server and our
client cost (goal >= 0.9). Start-up and warm-up are excluded; timed rounds alternate between the two sides.

    .venv/bin/python benchmarks/eval_throughput.py [--family qwen3_moe] [--n 32] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from harness.serving.vllm import VLLMServer, chat, cuda_available
from harness.standins.zoo import ZOO, build_model
from harness.tasks.base import Endpoint, GenerationSettings
from harness.tasks.client import chat_many
from harness.tasks.math import PROMPT, read_jsonl

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


class FixedLengthSettings(GenerationSettings):
    """The task's settings plus `ignore_eos`, so every reply has exactly max_tokens tokens."""

    def request_fields(self) -> dict[str, Any]:
        return {**super().request_fields(), "ignore_eos": True}


def conversations(data_dir: Path, n: int) -> list[list[dict[str, str]]]:
    rows = read_jsonl(data_dir / "gsm8k" / "test.jsonl")[:n]
    return [[{"role": "user", "content": PROMPT.format(problem=r["question"])}] for r in rows]


def offline_engine(model_dir: Path, convs, settings: GenerationSettings, max_model_len: int, dtype: str):
    """vLLM's offline engine and the chat-templated token-id prompts it will be given."""
    from transformers import AutoTokenizer
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [TokensPrompt(prompt_token_ids=list(tokenizer.apply_chat_template(
        c, add_generation_prompt=True, tokenize=True, return_dict=False, **settings.chat_template_kwargs)))
        for c in convs]
    llm = LLM(model=str(model_dir), dtype=dtype, enforce_eager=not cuda_available(), max_model_len=max_model_len,
              seed=settings.seed)
    return llm, prompts


def offline_rate(llm, prompts, settings: GenerationSettings) -> float:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=settings.max_tokens, ignore_eos=True, seed=settings.seed)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    if tokens != len(prompts) * settings.max_tokens:
        raise RuntimeError(f"offline: {tokens} tokens, expected {len(prompts) * settings.max_tokens}")
    return tokens / elapsed


def served_rate(endpoint: Endpoint, convs, settings: GenerationSettings) -> float:
    started = time.perf_counter()
    completions = chat_many(endpoint, convs, settings)
    elapsed = time.perf_counter() - started
    tokens = sum(c.completion_tokens for c in completions)
    if tokens != len(convs) * settings.max_tokens:
        raise RuntimeError(f"served: {tokens} tokens, expected {len(convs) * settings.max_tokens}")
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen3_moe", choices=list(ZOO))
    parser.add_argument("--model-dir", type=Path, help="an existing checkpoint instead of a zoo model")
    parser.add_argument("--data-dir", type=Path, default=DATASETS)
    parser.add_argument("--n", type=int, default=32, help="number of GSM8K prompts")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--concurrency", type=int, action="append",
                        help="client concurrency to measure (repeatable; default: the task default and --n)")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, auto on GPU")
    args = parser.parse_args()
    dtype = args.dtype or ("auto" if cuda_available() else "float32")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # the same KV cache as VLLMServer's CPU default
    work = Path(tempfile.mkdtemp(prefix="eval-throughput-"))
    model_dir = args.model_dir or build_model(args.family, work / args.family)
    convs = conversations(args.data_dir, args.n)
    settings = FixedLengthSettings(max_tokens=args.max_tokens)
    default_concurrency = GenerationSettings().concurrency
    concurrencies = sorted(set(args.concurrency or [default_concurrency, args.n]))

    runs: dict[str, list[float]] = {"offline": [], **{f"served@{c}": [] for c in concurrencies}}
    # Both engines stay up and the timed runs alternate, so load from other processes on a
    # shared host hits both sides alike; the ratio is the median of the per-round ratios.
    with VLLMServer(model_dir, served_model_name="bench", dtype=dtype, max_model_len=args.max_model_len,
                    log_path=work / "vllm.log") as server:
        endpoint = Endpoint(base_url=server.base_url, model="bench")
        served_prompt_len = chat(server.base_url, "bench", convs[0][0]["content"], max_tokens=4,
                                 chat_template_kwargs=settings.chat_template_kwargs)["usage"]["prompt_tokens"]
        llm, prompts = offline_engine(model_dir, convs, settings, args.max_model_len, dtype)
        if served_prompt_len != len(prompts[0]["prompt_token_ids"]):
            raise RuntimeError(f"prompt lengths differ: served {served_prompt_len}, "
                               f"offline {len(prompts[0]['prompt_token_ids'])}")
        offline_rate(llm, prompts[:2], settings)  # warm-up
        served_rate(endpoint, convs[:2], settings)
        for _ in range(args.repeats):
            for c in concurrencies:
                runs[f"served@{c}"].append(served_rate(endpoint, convs, settings.model_copy(update={"concurrency": c})))
            runs["offline"].append(offline_rate(llm, prompts, settings))

    print(f"model {model_dir} ({dtype}), {args.n} GSM8K prompts ({served_prompt_len} prompt tokens in the first), "
          f"{args.max_tokens} new tokens each, greedy, ignore_eos, {args.repeats} alternating rounds")
    print(f"offline LLM.generate            median {median(runs['offline']):9.1f} tok/s")
    for c in concurrencies:
        served = runs[f"served@{c}"]
        ratios = [a / b for a, b in zip(served, runs["offline"], strict=True)]
        note = " (task default)" if c == default_concurrency else ""
        print(f"served, concurrency {c:4d}{note:15s} median {median(served):9.1f} tok/s   "
              f"ratio median {median(ratios):.3f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
