"""Per-domain routing of the toy MoE, recorded with the harness's own Observer.

Calibration text is drawn from the training stream of one domain (chat-formatted, with
the answer), never from the evaluation items. The table (routed-token share of each
expert, per layer and domain) shows whether experts specialise by domain.

    python -m harness.standins.toy.routing MODEL_DIR [--samples N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.standins.toy.corpus import DOMAINS, SEED, training_stream

CALIBRATION_SEED = SEED + 1  # the same corpus (facts, held-out items), another sample of it


def domain_texts(domain: str, n: int, seed: int = CALIBRATION_SEED) -> list[Any]:
    """n examples of one domain from the (calibration-seeded) training stream."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
    found = []
    for example in training_stream(SEED, sample_seed=seed):
        if example.domain == domain:
            found.append(example)
            if len(found) == n:
                return found
    raise AssertionError("unreachable: the stream is endless")


def calibration_batch(tokenizer, examples: list[Any]):
    """(input_ids, attention_mask), right-padded: chat examples through the chat template, MC as raw text."""
    import torch

    texts = [ex.response if ex.prompt is None else tokenizer.apply_chat_template(ex.messages(), tokenize=False)
             for ex in examples]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, :len(e)] = torch.tensor(e)
        mask[i, :len(e)] = 1
    return ids, mask


def calibrate_domains(model, tokenizer, domains: tuple[str, ...] = DOMAINS, n: int = 128,
                      seed: int = CALIBRATION_SEED) -> dict[str, dict[int, Any]]:
    """Observer statistics (LayerStatistics per MoE layer) for each domain separately."""
    from harness.archs import get_arch
    from harness.calibration.run import calibrate_loaded

    arch = get_arch(model.config.to_dict())
    found = {}
    for domain in domains:
        ids, mask = calibration_batch(tokenizer, domain_texts(domain, n, seed))
        found[domain] = calibrate_loaded(model, arch, ids, mask, batch_size=32)
    return found


def routing_shares(stats: dict[int, Any]) -> dict[int, list[float]]:
    """Per layer, each expert's share of the routed (token, slot) pairs."""
    shares = {}
    for index, layer in sorted(stats.items()):
        count = layer.count.double()
        shares[index] = (count / count.sum()).tolist()
    return shares


def routing_table(by_domain: dict[str, dict[int, Any]]) -> str:
    """Markdown: one row per (layer, domain), one column per expert, routed share in %."""
    shares = {d: routing_shares(s) for d, s in by_domain.items()}
    first = next(iter(shares.values()))
    n_experts = len(next(iter(first.values())))
    lines = ["| layer | domain | " + " | ".join(f"e{j}" for j in range(n_experts)) + " |",
             "|---|---|" + "---|" * n_experts]
    for layer in sorted(first):
        for domain, per_layer in shares.items():
            cells = " | ".join(f"{100 * v:.0f}" for v in per_layer[layer])
            lines.append(f"| {layer} | {domain} | {cells} |")
    return "\n".join(lines)


def total_variation(p: list[float], q: list[float]) -> float:
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.standins.toy.routing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args(argv)
    from harness.standins.toy.evaluate import load

    model, tokenizer = load(Path(args.model_dir))
    print(routing_table(calibrate_domains(model, tokenizer, n=args.samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
