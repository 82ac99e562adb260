"""Train the toy MoE (qwen3_moe family) on the synthetic four-domain corpus, on CPU.

    python -m harness.standins.toy.train OUT_DIR [--steps N] [--seed S] ...

Writes a checkpoint vLLM serves (config with the hub key `num_experts`, safetensors,
tokenizer with the ChatML template, generation config), the held-out evaluation data
(OUT_DIR/data), and training.json: the exact command, the settings, the loss curve
(total, per domain, load-balancing) and the wall-clock time. Deterministic for a given
seed and thread count (the loop is plain PyTorch on a fixed example stream).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.standins.toy.corpus import DOMAINS, SEED, TrainingExample, tokenizer_text, training_stream, write_eval_data

VOCAB_SIZE = 1024
IGNORE = -100


@dataclass
class TrainSettings:
    """Everything that changes the trained weights (recorded in training.json)."""

    seed: int = SEED
    steps: int = 750
    batch_size: int = 64
    micro_batch: int = 32
    lr: float = 3e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    aux_loss_coef: float = 0.01
    hidden_size: int = 128
    layers: int = 4
    experts: int = 16
    top_k: int = 2
    moe_intermediate_size: int = 128
    threads: int = 1
    log_every: int = 50
    domain_weights: str = "math=0.4,coding=0.2,mc=0.25,creative=0.15"  # share of each domain in the stream


def build_toy_tokenizer(seed: int = SEED, vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE learned from the corpus; digits stay single tokens so arithmetic is per digit."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from harness.standins.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(tokenizer_text(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|bos|>", eos_token="<|endoftext|>", pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHAT_TEMPLATE,
        model_max_length=2048, clean_up_tokenization_spaces=False,
    )


def build_config(settings: TrainSettings, tokenizer):
    """A qwen3_moe config: head_dim 64 (vLLM's CPU attention needs it), vocab = tokenizer size."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "qwen3_moe",
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size, num_hidden_layers=settings.layers,
        num_attention_heads=settings.hidden_size // 64, num_key_value_heads=1, head_dim=64,
        intermediate_size=4 * settings.hidden_size, moe_intermediate_size=settings.moe_intermediate_size,
        num_experts=settings.experts, num_experts_per_tok=settings.top_k, norm_topk_prob=True,
        # Trained on short texts; the room is for real benchmark prompts in the demo sweep.
        max_position_embeddings=4096, tie_word_embeddings=False, rms_norm_eps=1e-6,
        router_aux_loss_coef=settings.aux_loss_coef, output_router_logits=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = ["Qwen3MoeForCausalLM"]
    return config


def encode(example: TrainingExample, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids and labels: chat examples learn only the assistant turn, raw texts learn everything."""
    if example.prompt is None:
        ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return ids, list(ids)
    messages = example.messages()
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise RuntimeError("chat template does not extend the generation prompt; cannot mask the prompt")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def _batch(examples: list[TrainingExample], tokenizer):
    import torch

    encoded = [encode(ex, tokenizer) for ex in examples]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (tok, lab) in enumerate(encoded):
        ids[row, :len(tok)] = torch.tensor(tok)
        labels[row, :len(lab)] = torch.tensor(lab)
        mask[row, :len(tok)] = 1
    return ids, labels, mask


def _lr(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(out_dir: str | Path, settings: TrainSettings, command: str | None = None) -> dict[str, Any]:
    """Train, save the checkpoint + data + training.json into out_dir; return the training record."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    out = Path(out_dir)
    tokenizer = build_toy_tokenizer(settings.seed)
    model = AutoModelForCausalLM.from_config(build_config(settings, tokenizer), dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.98))
    weights = {k: float(v) for k, v in (part.split("=") for part in settings.domain_weights.split(","))}
    stream = training_stream(settings.seed, weights)
    curve: list[dict[str, Any]] = []
    window: dict[str, list[float]] = {"loss": [], "aux": [], **{d: [] for d in DOMAINS}}
    start = time.time()
    model.train()
    for step in range(settings.steps):
        examples = [next(stream) for _ in range(settings.batch_size)]
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, settings)
        optimizer.zero_grad(set_to_none=True)
        # Sorted by length and cut into micro-batches, so little compute goes to padding.
        examples.sort(key=lambda ex: len(encode(ex, tokenizer)[0]))
        chunks = [examples[i:i + settings.micro_batch] for i in range(0, len(examples), settings.micro_batch)]
        encoded = [_batch(chunk, tokenizer) for chunk in chunks]
        n_valid = sum(int((labels[:, 1:] != IGNORE).sum()) for _, labels, _ in encoded)
        lm_total, aux_total = 0.0, 0.0
        for chunk, (ids, labels, mask) in zip(chunks, encoded, strict=True):
            out_fw = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
            logits = out_fw.logits[:, :-1].float()
            target = labels[:, 1:]
            token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                         ignore_index=IGNORE, reduction="none").view(target.shape)
            valid = (target != IGNORE).float()
            lm_loss = (token_loss * valid).sum() / n_valid  # the mean over every learned token of the batch
            aux = out_fw.aux_loss * len(chunk) / len(examples)
            (lm_loss + settings.aux_loss_coef * aux).backward()
            lm_total += float(lm_loss.detach())
            aux_total += float(aux.detach())
            with torch.no_grad():
                per_example = (token_loss * valid).sum(1) / valid.sum(1).clamp(min=1)
                for ex, value in zip(chunk, per_example.tolist(), strict=True):
                    window[ex.domain].append(value)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        window["loss"].append(lm_total)
        window["aux"].append(aux_total)
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            point = {"step": step + 1, "seconds": round(time.time() - start, 1), "lr": _lr(step, settings),
                     **{k: round(sum(v) / len(v), 4) for k, v in window.items() if v}}
            curve.append(point)
            print(json.dumps(point), flush=True)
            window = {k: [] for k in window}
    seconds = time.time() - start
    record = {"command": command, "settings": asdict(settings), "parameters": n_params,
              "train_seconds": round(seconds, 1), "torch_version": torch.__version__, "curve": curve}
    save(model, tokenizer, out, record)
    return record


def save(model, tokenizer, out: Path, record: dict[str, Any]) -> None:
    """Checkpoint as vLLM reads it (hub key `num_experts`), tokenizer, eval data, training.json."""
    from transformers import GenerationConfig

    from harness.util.atomic import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    if "num_local_experts" in config:  # transformers 5 writes its canonical name; the hub uses num_experts
        config["num_experts"] = config.pop("num_local_experts")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")],
                     pad_token_id=tokenizer.pad_token_id, do_sample=False).save_pretrained(out)
    write_eval_data(out / "data", seed=record["settings"]["seed"])
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(out / "training.json", lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.standins.toy.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    defaults = TrainSettings()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    settings = TrainSettings(**{k: getattr(args, k) for k in asdict(defaults)})
    command = "python -m harness.standins.toy.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    record = train(args.out_dir, settings, command)
    print(f"trained {record['parameters']} parameters in {record['train_seconds']} s -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
