"""Issue 24's layout move, as a script re-applied after merging the feature branches.

Moves modules into packages that show the pipeline, rewrites every reference (imports,
dotted strings, paths in docs), leaves thin command modules where a command's module moved,
and mirrors the tests into folders. Run from the repository root: python restructure.py
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

# old dotted module -> new dotted module
MODULES = {
    "harness.util.atomic": "harness.util.atomic",
    "harness.util.redaction": "harness.util.redaction",
    "harness.util.registry": "harness.util.registry",
    "harness.sweep.config": "harness.sweep.config",
    "harness.sweep.grid": "harness.sweep.grid",
    "harness.sweep.rehearsal": "harness.sweep.rehearsal",
    "harness.sweep.store": "harness.sweep.store",
    "harness.sweep.stages": "harness.sweep.stages",
    "harness.sweep.executors": "harness.sweep.executors",
    "harness.checkpoint.hub": "harness.checkpoint.hub",
    "harness.checkpoint.quantisation": "harness.checkpoint.quantisation",
    "harness.serving.vllm": "harness.serving.vllm.vllm",
    "harness.serving.records": "harness.serving.vllm.records",
    "harness.results.table": "harness.results.table.table",
    "harness.results.plots": "harness.results.table.plots",
    "harness.results.compare": "harness.results.table.compare",
    "harness.sandbox.api": "harness.sandbox.api.api",
    "harness.standins.tokenizer": "harness.standins.tokenizer",
    "harness.standins.zoo": "harness.standins.zoo",
    "harness.standins.toy": "harness.standins.toy",
    "harness.results.report": "harness.results.table.report",
    "harness.tasks.failures": "harness.tasks.failures",
    "harness.checkpoint.inventory": "harness.checkpoint.inventory",
    "harness.sweep.costs": "harness.sweep.cli.costs",
    "harness.sweep.preflight": "harness.sweep.cli.preflight",
}
# commands users type whose module moved: a thin module keeps `python -m harness.X` working
COMMANDS = {"harness.sweep.store", "harness.standins.zoo", "harness.results.plots", "harness.results.compare", "harness.results.report"}
PACKAGE_DOCS = {
    "harness/util": "Small shared utilities: atomic writes, secret redaction, the name registry.",
    "harness/sweep": "The sweep: its CLI, config schema and validation, grid of jobs, store, stages, executors, rehearsal.",
    "harness/serving": "vLLM servers: start, record (so none outlives its owner), sanity-check.",
    "harness/results": "From task results to the tidy table, the figures and the paired comparisons.",
    "harness/sandbox": "The isolated child process that runs generated code (coding benchmarks).",
    "harness/standins": "Stand-ins for what this machine lacks: the zoo of tiny models, the toy model, the offline tokenizer.",
}
TESTS = {
    "calibration": ["test_calibrate_cli", "test_calibration_data", "test_observer", "test_quantised_calibration"],
    "checkpoint": ["test_checkpoint", "test_compress_cli", "test_hub", "test_quantisation", "test_permissions"],
    "methods": ["test_methods", "test_merging", "test_ream"],
    "tasks": ["test_coding", "test_creative", "test_livecodebench", "test_math", "test_mc", "test_evaluate_cli",
              "test_toy_tasks", "test_failures", "test_scoring_parity"],
    "sandbox": ["test_sandbox"],
    "results": ["test_results", "test_plots", "test_compare", "test_report"],
    "sweep": ["test_sweep", "test_sweep_config", "test_executors", "test_rehearsal", "test_costs", "test_stages"],
    "serving": ["test_serving", "test_compressed_serving"],
    "standins": ["test_zoo", "test_toy_corpus", "test_toy_pruning"],
    "util": ["test_redaction"],
}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".ini"}


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True)


def path_of(dotted: str) -> Path:
    p = Path(*dotted.split("."))
    return p if p.is_dir() else p.with_suffix(".py")


def move_modules() -> None:
    # sources first, to temporary names: harness/sweep/cli.py, serving.py, results.py, sandbox.py
    # must leave before the packages of the same names can exist
    staged = []
    for old, new in [*MODULES.items(), ("harness.sweep", "harness.sweep.cli")]:
        src = path_of(old)
        if not src.exists() or (old == "harness.sweep" and src.is_dir()):
            continue
        tmp = src.with_name(f"_moving_{src.name}")
        git("mv", str(src), str(tmp))
        dst = Path(*new.split("."))
        staged.append((tmp, dst if src.is_dir() or tmp.is_dir() else dst.with_suffix(".py")))
    for tmp, dst in staged:
        dst.parent.mkdir(parents=True, exist_ok=True)
        git("mv", str(tmp), str(dst))
    for pkg, doc in PACKAGE_DOCS.items():
        init = Path(pkg) / "__init__.py"
        if not init.exists():
            init.write_text(f'"""{doc}"""\n')
    Path("harness/sweep/__main__.py").write_text(
        '"""`python -m harness.sweep`: see harness.sweep.cli."""\n\n'
        "from harness.sweep.cli import main\n\nraise SystemExit(main())\n")
    for cmd in COMMANDS:
        new = MODULES[cmd]
        Path(*cmd.split(".")).with_suffix(".py").write_text(
            f'"""`python -m {cmd}`: the command; its code lives in {new}."""\n\n'
            f"import sys\n\nfrom {new} import main\n\n"
            f'if __name__ == "__main__":\n    raise SystemExit(main(sys.argv[1:]))\n')


def move_tests() -> dict[str, str]:
    renamed = {}
    for folder, names in TESTS.items():
        d = Path("tests") / folder
        d.mkdir(exist_ok=True)
        (d / "__init__.py").touch()
        for name in names:
            src = Path("tests") / f"{name}.py"
            if src.exists():
                git("mv", str(src), str(d / f"{name}.py"))
                renamed[f"tests.{name}"] = f"tests.{folder}.{name}"
                text = (d / f"{name}.py").read_text()
                text = text.replace("Path(__file__).resolve().parents[1]", "Path(__file__).resolve().parents[2]")
                text = text.replace('Path(__file__).parent / "fixtures"', 'Path(__file__).parents[1] / "fixtures"')
                (d / f"{name}.py").write_text(text)
    return renamed


SWEEP_SUBMODULES = ("config", "grid", "rehearsal", "store", "stages", "executors", "cli")


def rewrite(text: str, suffix: str, test_names: dict[str, str]) -> str:
    # harness.sweep (the old module) -> harness.sweep.cli, in code only; `-m harness.sweep` and the logger stay
    text = re.sub(r"\bfrom harness\.sweep import\b", "from harness.sweep.cli import", text)
    text = re.sub(r"\bimport harness\.sweep\b(?!\.)", "import harness.sweep.cli", text)
    text = re.sub(rf"\bharness\.sweep\.(?!(?:{'|'.join(SWEEP_SUBMODULES)})\b)([A-Za-z_]\w*)", r"harness.sweep.cli.\1", text)
    olds = sorted(MODULES, key=len, reverse=True)
    alt = "|".join(re.escape(o) for o in olds)

    def dotted(m: re.Match) -> str:
        old = m.group(1)
        before = text_ref[0][max(0, m.start() - 8):m.start()]
        if old in COMMANDS and (before.endswith("-m ") or before.endswith('"-m", "') or before.endswith("'-m', '")):
            return old
        return MODULES[old]

    text_ref = [text]
    text = re.sub(rf"\b({alt})\b(?![\w/])", dotted, text)
    for old in olds:
        new = MODULES[old]
        parent, leaf = new.rsplit(".", 1)
        old_leaf = old.rsplit(".", 1)[1]
        repl = f"from {parent} import {leaf}" + ("" if leaf == old_leaf else f" as {old_leaf}")
        text = re.sub(rf"\bfrom harness import {old_leaf}\b(?! as)", repl, text)
    paths = {o.replace(".", "/"): MODULES[o].replace(".", "/") for o in olds}
    palt = "|".join(re.escape(o) for o in paths)
    text = re.sub(rf"\b({palt})(\.py\b|/)", lambda m: paths[m.group(1)] + m.group(2), text)
    text = re.sub(r"\bharness/sweep\.py\b", "harness/sweep/cli.py", text)
    for old, new in test_names.items():
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
        text = re.sub(rf"\b{re.escape(old.replace('.', '/'))}\.py\b", new.replace(".", "/") + ".py", text)
    return text


def main() -> None:
    move_modules()
    test_names = move_tests()
    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    files += [str(p) for p in Path("harness").rglob("__init__.py")] + [str(p) for p in Path("tests").rglob("*.py")]
    shims = {str(Path(*c.split(".")).with_suffix(".py")) for c in COMMANDS} | {"harness/sweep/__main__.py"}
    for f in sorted(set(files)):
        p = Path(f)
        if f in shims or not p.is_file() or (p.suffix not in TEXT_SUFFIXES and p.name != "Makefile"):
            continue
        if f.startswith(("results/", "models/", "plots/")) and p.suffix != ".md":
            continue
        text = p.read_text()
        new = rewrite(text, p.suffix, test_names)
        if new != text:
            p.write_text(new)
    git("add", "-A", "harness", "tests")


if __name__ == "__main__":
    main()
