"""Score a toy checkpoint in-process (HF greedy generation / log-likelihood), with the toy tasks' scorers.

Serving every pruned variant with vLLM costs a minute each on a CPU; the pruning test and
the training note score in-process instead, through exactly the scoring functions of
harness.tasks.toy (answer extraction, sandboxed asserts, the rubric, argmax of the
choices' log-likelihoods as lm-eval computes them).

    python -m harness.standins.toy.evaluate MODEL_DIR [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import fmean
from typing import Any

from harness.standins.toy.corpus import DOMAINS, read_eval_items

CHANCE = {"math": 0.0, "coding": 0.0, "mc": 0.25, "creative": None}
# Enough for every reference answer of the domain (longest: math ~20, coding ~30, creative ~75 tokens).
MAX_NEW_TOKENS = {"math": 32, "coding": 48, "creative": 96}


def load(model_dir: str | Path):
    """(model, tokenizer) in float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 96, batch_size: int = 32) -> list[str]:
    """Greedy chat replies (the chat template with the generation prompt), decoded up to <|im_end|>."""
    import torch

    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    replies: list[str] = []
    tokenizer.padding_side = "left"
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id)
        for row in out[:, batch["input_ids"].shape[1]:]:
            ids = row.tolist()
            cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
            replies.append(tokenizer.decode(ids[:cut], skip_special_tokens=True))
    return replies


def choice_logliks(model, tokenizer, context: str, continuations: list[str]) -> list[float]:
    """Sum of log-probabilities of each continuation after the context, split as lm-eval splits it."""
    import torch

    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    rows = []
    for cont in continuations:
        whole = tokenizer(context + cont, add_special_tokens=False)["input_ids"]
        rows.append((whole, len(context_ids)))
    width = max(len(w) for w, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (whole, _) in enumerate(rows):
        ids[i, :len(whole)] = torch.tensor(whole)
        mask[i, :len(whole)] = 1
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    found = []
    for i, (whole, n_ctx) in enumerate(rows):
        positions = range(n_ctx, len(whole))
        found.append(float(sum(logprobs[i, p - 1, whole[p]] for p in positions)))
    return found


def evaluate_domain(model, tokenizer, domain: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (creative: rescaled rubric score) and per-item scores for one domain."""
    from harness.tasks.judge import rescale
    from harness.tasks.rubric_judge import rubric
    from harness.tasks.toy import mc_choice_continuations, score_coding, score_math

    if domain == "mc":
        scores = []
        for item in items:
            lls = choice_logliks(model, tokenizer, item["context"], mc_choice_continuations(item))
            scores.append(float(max(range(len(lls)), key=lls.__getitem__) == item["gold"]))
        return {"score": fmean(scores), "scores": scores}
    outputs = generate(model, tokenizer, [item["question"] for item in items], MAX_NEW_TOKENS[domain])
    if domain == "math":
        scores = [score_math(out, item["answer"])[1] for out, item in zip(outputs, items, strict=True)]
    elif domain == "coding":
        scores = [score for _, score, _ in score_coding(outputs, items)]
    else:
        scores = [rescale(rubric(out, item["constraints"])["score"]) for out, item in zip(outputs, items, strict=True)]
    return {"score": fmean(scores), "scores": scores, "outputs": outputs}


def evaluate_model(model_dir: str | Path, data_dir: str | Path | None = None, limit: int | None = None,
                   domains: tuple[str, ...] = DOMAINS) -> dict[str, float]:
    """Score per domain on the held-out items (first `limit` of each)."""
    import torch

    torch.set_num_threads(1)
    model, tokenizer = load(model_dir)
    data = Path(data_dir) if data_dir else Path(model_dir) / "data"
    scores = {}
    for domain in domains:
        items = read_eval_items(data / f"{domain}.jsonl")[:limit]
        scores[domain] = evaluate_domain(model, tokenizer, domain, items)["score"]
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.standins.toy.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--data-dir", default=None, help="default: MODEL_DIR/data")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(evaluate_model(args.model_dir, args.data_dir, args.limit), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
