"""Loading a model folder with the transformers engine: what it refuses, and why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fanout.layout import Model
from fanout.model_files import ModelLoadError
from fanout.protocol import GenerationParams
from worker_api.engines.transformers_engine import TransformersEngine


def params(**changes: object) -> GenerationParams:
    base = {"context": "The nation", "length": 8, "temperature": 1.0, "top_k": 40,
            "top_p": 0.9, "max_time": 600.0}  # no test waits on the clock
    return GenerationParams(**{**base, **changes})  # type: ignore[arg-type]


def test_pickle_weights_are_refused_unless_allowed(tiny_model_dir: Path,
                                                   tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()

    with pytest.raises(ModelLoadError, match="only pickle weights"):
        TransformersEngine(Model("pickled", folder), "cpu")
    allowed = TransformersEngine(Model("pickled", folder, allow_pickle=True), "cpu")
    assert allowed.generate(params(seed=1)).tokens > 0


def test_a_hub_model_missing_from_the_cache_says_how_to_fetch_it() -> None:
    # No download is attempted: the answer comes from the local cache, at once.
    expected = (r"hub model 'nobody/no-such-model' is not in the local cache "
                r".*fanout fetch nobody/no-such-model")
    with pytest.raises(ModelLoadError, match=expected):
        TransformersEngine(Model("nobody/no-such-model", None), "cpu")


def test_a_hub_model_in_the_cache_loads_from_its_snapshot(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lay the tiny model out as the hub cache does: refs/main -> snapshots/<commit>/.
    from huggingface_hub import constants

    repo = tmp_path / "models--fanout--tiny"
    commit = "0" * 40
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    loaded = TransformersEngine(Model("fanout/tiny", None), "cpu")
    assert loaded.generate(params(seed=1)).tokens == 8


@pytest.mark.parametrize(("remove", "missing"), [
    ("config.json", "config.json"),
    ("model.safetensors", "weights"),
    ("vocab.json", "tokenizer"),
])
def test_an_incomplete_folder_names_what_it_lacks(tiny_model_dir: Path, tmp_path: Path,
                                                  remove: str, missing: str) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, folder)
    (folder / remove).unlink()
    with pytest.raises(ModelLoadError, match=f"model folder {folder} lacks {missing}"):
        TransformersEngine(Model("partial", folder), "cpu")
