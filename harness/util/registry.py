"""One registry mechanism for model families, compression methods and benchmark tasks.

Nothing is listed by hand: a package's own modules are scanned (with `ast`, without importing
them) for classes that set the registry's key attribute to a string (`name = "reap"`,
`model_type = "glm4_moe"`), and installed packages add entries through an entry-point group
(name = the key, value = "module:Class"). So adding a method, task or family is one new file
(or one installed package), and listing or validating a sweep imports neither torch nor the
heavy evaluation libraries. An entry is imported on first use and checked: it must be a
subclass of the registry's base class and carry the name it is registered under. Built-in
names cannot be shadowed by a package.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import sys
from functools import cached_property
from pathlib import Path
from typing import Any


class Registry:
    def __init__(self, kind: str, package: str, key: str, base: str, group: str,
                 unknown: type[Exception] = KeyError):
        self.kind = kind  # "method", "task", "family": for messages
        self.package = package
        self.key = key
        self.base = base  # "module:Class" of the base every entry must subclass
        self.group = group
        self.unknown = unknown

    @cached_property
    def builtin(self) -> dict[str, str]:
        """The package's own entries, found by reading its modules' source."""
        module = importlib.import_module(self.package)
        found: dict[str, str] = {}
        for path in sorted(Path(module.__file__).parent.glob("*.py")):
            if path.stem == "__init__":
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    value = _string_attribute(node, self.key)
                    if value is not None:
                        if value in found:
                            raise TypeError(f"{self.kind} {value!r} is defined twice: {found[value]} and "
                                            f"{self.package}.{path.stem}:{node.name}")
                        found[value] = f"{self.package}.{path.stem}:{node.name}"
        return found

    def entries(self) -> dict[str, str]:
        """name -> "module:Class": the built-in ones, then those of installed packages."""
        found = dict(self.builtin)
        for name, value in _entry_points(self.group):
            found.setdefault(name, value)
        return found

    def names(self) -> list[str]:
        return sorted(self.entries())

    def __contains__(self, name: object) -> bool:
        return name in self.entries()

    def resolve(self, name: str) -> type:
        registry = self.entries()
        if name not in registry:
            raise self.unknown(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(sorted(registry))}")
        cls = _load(registry[name], f"{self.kind} {name!r}", self.unknown)
        base = _load(self.base, "base", TypeError)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"{self.kind} {name!r} resolves to {cls!r}, which is not a {self.base.replace(':', '.')}")
        if getattr(cls, self.key, None) != name:
            raise TypeError(f"{self.kind} {name!r} resolves to {cls.__name__}, whose {self.key} is "
                            f"{getattr(cls, self.key, None)!r}")
        return cls


_ENTRY_POINTS: dict[tuple, list[tuple[str, str]]] = {}


def _entry_points(group: str) -> list[tuple[str, str]]:
    """(name, value) of the group's installed entry points. Reading them scans every installed distribution's
    metadata (tens of milliseconds each time, and validating a sweep asks hundreds of times), so the answer is
    kept for as long as what it depends on stays the same: the import path and the lookup function itself."""
    lookup = importlib.metadata.entry_points
    key = (group, lookup, tuple(sys.path))
    if key not in _ENTRY_POINTS:
        _ENTRY_POINTS[key] = [(ep.name, ep.value) for ep in lookup(group=group)]
    return _ENTRY_POINTS[key]


def _string_attribute(node: ast.ClassDef, key: str) -> str | None:
    for stmt in node.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) \
            else []
        value = getattr(stmt, "value", None)
        if any(isinstance(t, ast.Name) and t.id == key for t in targets) and isinstance(value, ast.Constant) \
                and isinstance(value.value, str):
            return value.value
    return None


def _load(target: str, what: str, error: type[Exception]) -> Any:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise error(f"{what} is registered as {target!r}; expected 'module:Class'")
    return getattr(importlib.import_module(module_name), attr)
