"""The worker's in-process tests: models run on one thread, as a pool's slots do, so a
busy machine slows them down but cannot set thread pools spinning against it.

``engine`` is the tiny model loaded by each engine in turn: a test that takes it is a
worker contract test, and runs against both."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fanout.convert import ensure_converted
from fanout.layout import Model
from worker_api.engines.base import Engine
from worker_api.engines.transformers_engine import TransformersEngine, set_cpu_threads

ENGINES = ("transformers", "ctranslate2")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    set_cpu_threads(1)


def load(name: str, model: Model) -> Engine:
    """``model`` on the CPU with engine ``name`` (CTranslate2: int8, converted once)."""
    if name == "ctranslate2":
        from worker_api.engines.ctranslate2_engine import CTranslate2Engine

        converted, _ = ensure_converted(model, "int8")
        return CTranslate2Engine(model, converted, "cpu", "int8", threads=1)
    return TransformersEngine(model, "cpu", "float32")


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Engine:
    loaded = load(request.param, Model("tiny", tiny_model_dir))
    loaded.warm_up()
    return loaded


@pytest.fixture(scope="session")
def talks_to_the_end(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model changed to end every text at once: its final layer norm outputs the
    end-of-text embedding, grown so that its own logit beats every other token's."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("models") / "eos-first"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(folder / "model.safetensors")
    eos = weights["transformer.wte.weight"][50256] * 1000
    weights["transformer.wte.weight"][50256] = eos  # lm_head shares it (tied weights)
    weights["transformer.ln_f.weight"] = torch.zeros_like(weights["transformer.ln_f.weight"])
    weights["transformer.ln_f.bias"] = eos.clone()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder
