"""Fixtures every test layer shares: a small real GPT-2 and layout files that use it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanout.convert import CACHE_ENV
from fanout.layout import API_KEYS_ENV, FRONT_BIND_ENV, LAYOUT_ENV
from fanout.tools.ports import free_port
from fanout.tools.tiny_model import make_tiny_model

LayoutFactory = Callable[..., Path]
REPO = Path(__file__).resolve().parents[1]

# The suite starts servers of its own: a layout, front address or API keys exported in
# the developer's shell must not reach them (tests that want one set it themselves).
for _variable in (LAYOUT_ENV, FRONT_BIND_ENV, API_KEYS_ENV):
    os.environ.pop(_variable, None)


@pytest.fixture(scope="session", autouse=True)
def conversion_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CTranslate2 conversions made by this session's servers and tests go to a folder of
    its own (inherited by every server it starts), not to the developer's cache."""
    folder = tmp_path_factory.mktemp("conversions")
    os.environ[CACHE_ENV] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer GPT-2 with the real tokenizer, saved once per session."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2")


SHIPPED_MODELS = {"small": REPO / "models" / "small", "medium": REPO / "models" / "medium"}


def layout_document(model: Path, pools: dict[str, dict[str, Any]] | None = None,
                    front: dict[str, Any] | None = None,
                    generation: dict[str, Any] | None = None,
                    edge: dict[str, Any] | None = None) -> dict[str, Any]:
    """A layout using ``model``. Its edge puts the front on a free port of its own and
    lets one client address (the suite's) send as fast as it likes, unless ``edge`` says
    otherwise."""
    pools = pools or {"small": {"bind": "127.0.0.1:18101", "slots": ["cpu"]}}
    return {
        "front": {"bind": "127.0.0.1:18000", **(front or {})},
        "edge": {"front_bind": f"127.0.0.1:{free_port()}", "requests_per_second": 100_000,
                 "burst": 100_000, **(edge or {})},
        # A sample ends by its length, never by the clock, unless a test asks for less.
        "generation": generation or {"defaults": {"max_time": 10.0},
                                     "limits": {"length": 200, "max_time": 10.0}},
        "pools": {name: {"model": str(model), "dtype": "float32", **spec}
                  for name, spec in pools.items()},
    }


@pytest.fixture
def write_layout(tmp_path: Path, tiny_model_dir: Path) -> LayoutFactory:
    """Write a layout file using the tiny model; keyword arguments as ``layout_document``."""
    def write(name: str = "gpu_layout.yaml", **parts: Any) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(layout_document(tiny_model_dir, **parts), sort_keys=False))
        return path
    return write
