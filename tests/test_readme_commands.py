"""The commands README.md shows still exist with the options it shows (after a module move or a renamed flag,
this fails before a reader does)."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SUBCOMMANDS = {"harness.store": {"ls"}, "harness.zoo": {"build", "list"}}


def readme_commands() -> list[tuple[str, str | None, tuple[str, ...]]]:
    """(module, subcommand, options) of every `python -m harness...` in README.md, code blocks and inline."""
    text = README.read_text().replace("\\\n", " ")
    found = []
    for match in re.finditer(r"python -m (harness[\w.]*)([^`\n]*)", text):
        module, rest = match.group(1), match.group(2).split("#")[0]
        words = rest.split()
        sub = words[0] if words and words[0] in SUBCOMMANDS.get(module, ()) else None
        options = tuple(sorted({w.strip("[]").split("=")[0] for w in words if w.strip("[").startswith("--")}))
        found.append((module, sub, options))
    return list(dict.fromkeys(found))


COMMANDS = readme_commands()


def test_the_readme_shows_every_command():
    modules = {m for m, _, _ in COMMANDS}
    assert {"harness.sweep", "harness.calibrate", "harness.compress", "harness.evaluate", "harness.compare",
            "harness.plots", "harness.report", "harness.store", "harness.zoo"} <= modules


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # run_module of an imported module
@pytest.mark.parametrize(("module", "sub", "options"), COMMANDS,
                         ids=[f"{m} {s or ''} {' '.join(o)}".strip() for m, s, o in COMMANDS])
def test_readme_command_takes_its_options(module, sub, options, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, *([sub] if sub else []), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert done.value.code in (0, None)
    usage = capsys.readouterr().out
    missing = [o for o in options if not re.search(re.escape(o) + r"\b", usage)]
    assert not missing, f"README shows python -m {module} {sub or ''} with {missing}, which --help does not list"
