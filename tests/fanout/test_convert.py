"""The CTranslate2 conversion cache: converted once, found again, rebuilt when the model
changes, never half-written, and a clear error where it cannot be made."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fanout.cli import main
from fanout.convert import (
    CACHE_ENV,
    MANIFEST,
    ConversionError,
    converted_path,
    ensure_converted,
)
from fanout.layout import Model
from fanout.tools.tokenizer import write_gpt2_tokenizer


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def model(tiny_model_dir: Path, tmp_path: Path) -> Model:
    """A copy of the tiny model this test may change."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    return Model("./tiny", folder)


def test_a_model_is_converted_once_then_found_in_the_cache(cache: Path, model: Model) -> None:
    target, seconds = ensure_converted(model, "int8")
    assert seconds is not None and target.parent == cache / "ctranslate2"
    assert {"model.bin", "config.json", MANIFEST} <= {p.name for p in target.iterdir()}
    assert (target / "tokenizer" / "tokenizer.json").is_file()
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["window"] == 256 and manifest["eos_token_id"] == 50256
    assert manifest["quantization"] == "int8" and manifest["model_type"] == "gpt2"
    # 50257 x 64 embeddings + 256 x 64 positions + 2 blocks of 49,984 + the final norm
    assert manifest["parameters"] == 3_216_448 + 16_384 + 2 * 49_984 + 128
    assert ensure_converted(model, "int8") == (target, None)
    assert not [p for p in target.parent.iterdir() if ".partial-" in p.name]


def test_changed_weights_or_another_quantization_make_another_conversion(
        cache: Path, model: Model) -> None:
    first = converted_path(model, "int8")
    assert converted_path(model, "float32") != first
    assert model.path is not None
    (model.path / "README.md").write_text("a model card is not part of the model\n")
    assert converted_path(model, "int8") == first
    weights = model.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert converted_path(model, "int8") != first


def test_a_cache_that_cannot_be_written_says_how_to_convert_ahead(
        tmp_path: Path, model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocked / "cache"))
    with pytest.raises(ConversionError, match=r"cannot be written there .*fanout convert"):
        ensure_converted(model, "int8")


def test_a_model_ctranslate2_cannot_convert_names_the_transformers_engine(
        cache: Path, tmp_path: Path) -> None:
    from transformers import XGLMConfig, XGLMForCausalLM

    folder = tmp_path / "xglm"
    XGLMForCausalLM(XGLMConfig(vocab_size=50257, d_model=16, num_layers=1,
                               attention_heads=2, ffn_dim=32)).save_pretrained(folder)
    write_gpt2_tokenizer(folder)
    with pytest.raises(ConversionError, match=r"cannot convert .*`engine: transformers`"):
        ensure_converted(Model("./xglm", folder), "int8")
    assert not list((cache / "ctranslate2").glob("xglm-*-int8-*/"))


def layout_file(tmp_path: Path, model: Model, engine: str = "ctranslate2") -> Path:
    path = tmp_path / "layout.yaml"
    path.write_text(yaml.safe_dump({"pools": {
        "small": {"model": str(model.path), "bind": "127.0.0.1:18101", "slots": ["cpu"],
                  "engine": engine},
        "other": {"model": str(model.path), "bind": "127.0.0.1:18102", "slots": ["cpu"]}}}))
    return path


def test_two_converters_at_once_convert_once(cache: Path, model: Model,
                                            tmp_path: Path) -> None:
    """Two servers of the same model starting together: the lock makes one wait for the
    other's conversion instead of making its own."""
    command = [sys.executable, "-m", "fanout", "convert", "--layout",
               str(layout_file(tmp_path, model))]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    said = sorted(process.communicate(timeout=240)[0] for process in both)
    assert [process.returncode for process in both] == [0, 0]
    assert ["(cached)" in line for line in said] == [True, False]
    assert "converted in" in said[1]
    assert len(list((cache / "ctranslate2").glob("tiny-*-int8-*/"))) == 1


def test_the_command_converts_the_ctranslate2_pools(cache: Path, model: Model, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    layout = str(layout_file(tmp_path, model))
    assert main(["convert", "--layout", layout]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pool small: {model.path} (int8) -> {cache}") and "other" not in out
    assert main(["convert", "--layout", layout, "other"]) == 0
    assert "pool other: engine transformers, nothing to convert" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["convert", "--layout", layout, "nope"])
    assert "no pool 'nope'" in capsys.readouterr().err
