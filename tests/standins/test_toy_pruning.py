"""Expert selection matters on the trained toy MoE: at 50 % pruning, keeping the experts REAP
(or frequency) ranks highest retains more accuracy than keeping random experts, and far
more than keeping the ones it ranks lowest.

The whole path is the harness's: Observer calibration on domain text drawn from the
training distribution (not the evaluation items), the registered methods' plans, the
checkpoint writer; each pruned checkpoint is scored in-process with the toy tasks' own
scoring functions (serving every variant with vLLM would cost a minute each here).
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "toy-moe"
DOMAINS = ("math", "coding", "mc", "creative")
LIMIT = 40  # evaluation items per domain
CALIBRATION_PER_DOMAIN = 48
RANDOM_SEEDS = (0, 1, 2)


def _lowest(method_name: str):
    """The mirror image of a registered pruning method: keep the experts it ranks lowest."""
    from harness.methods import get_method
    from harness.methods.pruning import PruningMethod

    base = get_method(method_name)

    class Lowest(PruningMethod):
        name = f"{method_name}_lowest"

        def scores(self, layer):
            return -base.scores(layer).double()

    return Lowest()


@pytest.fixture(scope="module")
def accuracies(tmp_path_factory) -> dict[str, float]:
    """Mean accuracy over the toy domains of the original model and of every 50 % variant.

    As in the paper's domain-specific setting, each domain is calibrated on its own text
    and its pruned model is scored on that domain's held-out items.
    """
    from harness.archs import get_arch, read_config
    from harness.calibration.run import calibrate_loaded
    from harness.calibration.statistics import CalibrationStatistics
    from harness.checkpoint import write_checkpoint
    from harness.methods import get_method
    from harness.methods.constraints import ExpertConstraints
    from harness.standins.toy.evaluate import evaluate_model, load
    from harness.standins.toy.routing import calibration_batch, domain_texts

    if not (MODEL / "model.safetensors").is_file():
        pytest.fail(f"{MODEL} has no checkpoint: train it (see models/toy-moe/TRAINING.md)")
    torch.set_num_threads(1)
    model, tokenizer = load(MODEL)
    config = read_config(MODEL)
    constraints = ExpertConstraints.from_config(config)
    methods = {"reap": get_method("reap"), "frequency": get_method("frequency"),
               "reap_lowest": _lowest("reap"), "frequency_lowest": _lowest("frequency"),
               **{f"random{s}": get_method("random", {"seed": s}) for s in RANDOM_SEEDS}}
    root = tmp_path_factory.mktemp("toy_pruned")
    per_domain: dict[str, dict[str, float]] = {"original": evaluate_model(MODEL, limit=LIMIT, domains=DOMAINS)}
    for domain in DOMAINS:
        ids, mask = calibration_batch(tokenizer, domain_texts(domain, CALIBRATION_PER_DOMAIN))
        stats = CalibrationStatistics(calibrate_loaded(model, get_arch(config), ids, mask, batch_size=32))
        kept = {}
        for name, method in methods.items():
            plan = method.plan(stats, 0.5, constraints)
            kept[name] = {i: {g.members[0] for g in layer.groups} for i, layer in plan.layers.items()}
            out = write_checkpoint(plan, MODEL, root / f"{domain}-{name}", progress=False).path
            score = evaluate_model(out, data_dir=MODEL / "data", limit=LIMIT, domains=(domain,))[domain]
            per_domain.setdefault(name, {})[domain] = score
        # The highest and lowest halves are complements: the check compares disjoint expert sets.
        assert all(not kept["reap"][i] & kept["reap_lowest"][i] for i in kept["reap"])
    found = {name: fmean(scores.values()) for name, scores in per_domain.items()}
    found["random"] = fmean(found[f"random{s}"] for s in RANDOM_SEEDS)
    print("\n50 % pruning, toy accuracy per domain:")
    for name, scores in per_domain.items():
        print(f"  {name:17s} mean {found[name]:.3f}  " + "  ".join(f"{d} {v:.3f}" for d, v in scores.items()))
    return found


@pytest.mark.parametrize("method", ["reap", "frequency"])
def test_informed_pruning_beats_random_and_far_beats_its_mirror(accuracies, method):
    assert accuracies["original"] >= 0.6, accuracies
    assert accuracies[method] > accuracies["random"], accuracies
    assert accuracies[method] - accuracies[f"{method}_lowest"] >= 0.2, accuracies
    assert accuracies[method] <= accuracies["original"] + 0.05, accuracies


def test_expert_usage_differs_by_domain():
    """Routing shares differ far more between domains than between two samples of one domain."""
    from harness.standins.toy.evaluate import load
    from harness.standins.toy.routing import CALIBRATION_SEED, calibrate_domains, routing_shares, total_variation

    torch.set_num_threads(1)
    model, tokenizer = load(MODEL)
    first = {d: routing_shares(s) for d, s in calibrate_domains(model, tokenizer, n=48).items()}
    second = {d: routing_shares(s) for d, s in
              calibrate_domains(model, tokenizer, n=48, seed=CALIBRATION_SEED + 1).items()}
    layers = sorted(first["math"])
    within = fmean(total_variation(first[d][i], second[d][i]) for d in DOMAINS for i in layers)
    between = fmean(total_variation(first[a][i], first[b][i])
                    for a in DOMAINS for b in DOMAINS if a < b for i in layers)
    print(f"\nrouting total variation: between domains {between:.3f}, within a domain {within:.3f}")
    assert between > 0.15 and between > 3 * within, (between, within)
