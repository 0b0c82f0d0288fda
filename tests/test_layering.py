"""The layering of docs/ARCHITECTURE.md, as a test: who may import whom.

Read from the source with ``ast`` (imports inside functions included), so a rule broken
by a lazy import fails too:

- the tiers (``frontend_api``, ``worker_api``) import only the core and themselves,
  never each other;
- the core (``fanout``'s own modules) imports no tier, no launcher, no tool;
- the launcher (``fanout.launch``) imports only the core;
- among the core, the launcher and the tiers, only the worker's engine modules import
  an inference library (torch, transformers, CTranslate2); the conversion cache's
  converter, run in a child process of a pool's master, is the one stated exception.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFERENCE = ("torch", "transformers", "ctranslate2")
# The command dispatches to every layer (each subcommand imports its module when run).
COMMAND = {"fanout.cli", "fanout.__main__"}
# module -> the inference libraries it may import, and why
EXCEPTIONS = {"fanout.convert": "converts a model folder, in a child process of the master"}


def modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth, as absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer(name: str) -> str | None:
    """Which layer a first-party module belongs to (None: not first-party)."""
    top = name.split(".")[0]
    if top in ("frontend_api", "worker_api", "training"):
        return top
    if top != "fanout":
        return None
    if name in COMMAND:
        return "command"
    for sub in ("launch", "tools"):
        if name == f"fanout.{sub}" or name.startswith(f"fanout.{sub}."):
            return sub
    return "core"


ALLOWED = {
    "core": {"core"},
    "launch": {"core", "launch"},
    "frontend_api": {"core", "frontend_api"},
    "worker_api": {"core", "worker_api"},
}
CHECKED = [(name, path) for package in ("fanout", "frontend_api", "worker_api")
           for name, path in modules(package) if layer(name) in ALLOWED]


def test_every_module_is_checked() -> None:
    names = {name for name, _ in CHECKED}
    assert {"fanout.protocol", "fanout.params", "fanout.launch.serve",
            "frontend_api.fanout", "worker_api.engines.base"} <= names
    assert not any(name.startswith("fanout.tools") for name in names)


@pytest.mark.parametrize(("name", "path"), CHECKED, ids=[name for name, _ in CHECKED])
def test_imports_keep_to_their_layer(name: str, path: Path) -> None:
    own = layer(name)
    assert own is not None
    wrong = sorted(target for target in imported(path)
                   if (other := layer(target)) is not None and other not in ALLOWED[own])
    assert not wrong, f"{name} ({own}) imports {wrong}"


@pytest.mark.parametrize(("name", "path"), CHECKED, ids=[name for name, _ in CHECKED])
def test_only_the_engines_import_an_inference_library(name: str, path: Path) -> None:
    heavy = sorted(target for target in imported(path)
                   if target.split(".")[0] in INFERENCE)
    if name.startswith("worker_api.engines.") or name in EXCEPTIONS:
        return
    assert not heavy, f"{name} imports {heavy}: only worker_api.engines may"
