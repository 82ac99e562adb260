"""Calibration on a GPU at a real model's shape: throughput, observer overhead, peak memory.

    python benchmarks/calibration_gpu.py                       # Qwen3-30B-A3B's shape, 64 x 2048 tokens
    python benchmarks/calibration_gpu.py --layers 4 --samples 8 --device cpu   # a smoke run anywhere

The model has Qwen3-30B-A3B's real shape (48 layers, 128 experts, top-8, hidden 2048, expert width
768, 32 heads / 4 KV heads of 128, vocabulary 151,936), built from its config with random bf16
weights (no download; about 61 GB on the GPU). It needs torch and transformers only, no vLLM.
Printed: tokens/s of a plain forward and of the observer with routed-only statistics (goal <= 1.2x the
plain forward), with mean_out too, peak GPU memory, and the projected time for the paper's 1024 x 2048.
"""

from __future__ import annotations

import argparse
import time

QWEN3_30B_A3B = dict(
    model_type="qwen3_moe", hidden_size=2048, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
    head_dim=128, intermediate_size=6144, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
    norm_topk_prob=True, vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=False, decoder_sparse_step=1, mlp_only_layers=[],
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-mean-out", action="store_true", help="mean_out runs all 128 experts on every token")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.archs import get_arch
    from harness.calibration.run import calibrate_loaded

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    settings = {**QWEN3_30B_A3B, "num_hidden_layers": args.layers}
    config = AutoConfig.for_model(**settings)
    torch.manual_seed(0)
    started = time.perf_counter()
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    built = time.perf_counter() - started
    arch = get_arch({**settings})
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.samples, args.length), generator=generator)
    mask = torch.ones_like(ids)
    n_tokens = ids.numel()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def plain() -> None:
        with torch.no_grad():
            for start in range(0, args.samples, args.batch_size):
                model(input_ids=ids[start:start + args.batch_size].to(device),
                      attention_mask=mask[start:start + args.batch_size].to(device), use_cache=False)
        sync()

    def timed(fn) -> float:
        fn()  # warm-up (kernels, allocator)
        best = float("inf")
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def observed(mean_out: bool):
        return lambda: calibrate_loaded(model, arch, ids, mask, batch_size=args.batch_size,
                                        extras={"mean_out"} if mean_out else ())

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t_plain = timed(plain)
    t_routed = timed(observed(False))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    t_mean = None if args.skip_mean_out else timed(observed(True))
    params = sum(p.numel() for p in model.parameters()) / 1e9
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"model: Qwen3-30B-A3B shape, {args.layers} layers, {params:.2f} B params (bf16), built in {built:.0f} s")
    print(f"device: {name}; tokens: {args.samples} x {args.length} = {n_tokens}, batch {args.batch_size}, "
          f"best of {args.repeats}")
    print(f"plain forward               {t_plain:8.2f} s  {n_tokens / t_plain:10.0f} tokens/s")
    print(f"observer, routed statistics {t_routed:8.2f} s  {n_tokens / t_routed:10.0f} tokens/s  "
          f"ratio {t_routed / t_plain:.2f} (goal <= 1.2)")
    if t_mean is not None:
        print(f"observer, + mean_out        {t_mean:8.2f} s  {n_tokens / t_mean:10.0f} tokens/s  "
              f"ratio {t_mean / t_plain:.2f}")
    print(f"peak GPU memory (routed)    {peak:8.1f} GiB")
    scale = (1024 * 2048) / n_tokens * (48 / args.layers)
    print(f"projected for the paper's 1024 x 2048 on all 48 layers: routed {t_routed * scale / 60:.1f} min"
          + (f", with mean_out {t_mean * scale / 60:.1f} min" if t_mean is not None else ""))


if __name__ == "__main__":
    main()
