"""The memory-fit estimate: model sizes from real files, device totals, oversubscription."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from fanout.launch.memory_fit import (
    CPU_WORKER_OVERHEAD,
    CTRANSLATE2_CPU_WORKER_OVERHEAD,
    CUDA_WORKER_OVERHEAD,
    ModelSize,
    dtype_bytes,
    fit_report,
    gpu_memory,
    kv_window,
    model_size,
    oversubscription_warnings,
    replica,
)
from fanout.layout import GenerationLimits, Model, load_layout
from tests.conftest import LayoutFactory, layout_document

GPT2_SMALL = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12,
              "n_positions": 1024, "vocab_size": 50257, "n_inner": None}
GPT2_SMALL_PARAMETERS = 124_439_808  # as published for openai-community/gpt2


def config_only(folder: Path, **config: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**GPT2_SMALL, **config}))
    return folder


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A real safetensors file of float32 zeros: an 8-byte length, a JSON header, data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))


def test_the_safetensors_header_gives_the_exact_count_and_the_formula_agrees(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    exact = model_size(Model("tiny", tiny_model_dir))
    assert exact is not None and exact.counted_from == "safetensors header"
    config = json.loads((tiny_model_dir / "config.json").read_text())
    estimated = model_size(Model("tiny", config_only(tmp_path / "tiny", **config)))
    assert estimated is not None and estimated.counted_from == "config.json"
    assert exact.parameters == estimated.parameters == 3_332_928
    assert (exact.n_layer, exact.n_embd, exact.n_positions) == (2, 64, 256)


def test_the_formula_gives_gpt2_small(tmp_path: Path) -> None:
    size = model_size(Model("gpt2", config_only(tmp_path / "gpt2")))
    assert size is not None and size.parameters == GPT2_SMALL_PARAMETERS


def test_causal_mask_buffers_in_a_checkpoint_are_not_parameters(tmp_path: Path) -> None:
    folder = config_only(tmp_path / "m", n_layer=1, n_embd=4, n_positions=8, vocab_size=10)
    write_safetensors(folder / "model.safetensors", {
        "wte.weight": [10, 4], "h.0.attn.c_attn.bias": [12], "h.0.attn.bias": [1, 1, 8, 8],
        "h.0.attn.masked_bias": [1]})
    size = model_size(Model("m", folder))
    assert size is not None and size.parameters == 40 + 12


def test_an_unreadable_model_has_no_size(tmp_path: Path) -> None:
    assert model_size(Model("empty", tmp_path)) is None
    (tmp_path / "config.json").write_text("{not json")
    assert model_size(Model("broken", tmp_path)) is None
    assert model_size(Model("nobody/not-in-the-cache", None)) is None


@pytest.mark.parametrize(("dtype", "device", "width"), [
    ("auto", "cpu", 4), ("auto", "cuda:0", 2), ("float32", "cuda:1", 4),
    ("bfloat16", "cpu", 2), ("float16", "cuda:0", 2)])
def test_bytes_per_parameter_follow_the_worker(dtype: str, device: str, width: int) -> None:
    assert dtype_bytes(dtype, device) == width


def test_a_replica_is_weights_plus_kv_cache_plus_runtime() -> None:
    size = ModelSize(GPT2_SMALL_PARAMETERS, 12, 768, 1024, "config.json")
    on_gpu = replica(size, "float16", "cuda:0", GenerationLimits())
    assert on_gpu.weights == 2 * GPT2_SMALL_PARAMETERS
    assert on_gpu.kv_cache == 2 * 12 * 768 * 1024 * 2  # K and V, every layer, full window
    assert on_gpu.total == on_gpu.weights + on_gpu.kv_cache + CUDA_WORKER_OVERHEAD
    on_cpu = replica(size, "auto", "cpu", GenerationLimits())
    assert on_cpu.weights == 4 * GPT2_SMALL_PARAMETERS
    assert on_cpu.overhead == CPU_WORKER_OVERHEAD
    # A layout that lets only a short context through needs a shorter cache.
    assert kv_window(size, GenerationLimits(length=20, context_bytes=100)) == 120


def test_a_ctranslate2_replica_holds_quantized_weights_and_no_torch() -> None:
    size = ModelSize(GPT2_SMALL_PARAMETERS, 12, 768, 1024, "config.json")
    int8 = replica(size, "auto", "cpu", GenerationLimits(), quantization="int8")
    assert int8.weights == GPT2_SMALL_PARAMETERS  # a byte a weight
    assert int8.kv_cache == 2 * 12 * 768 * 1024 * 4  # float32 activations on the CPU
    assert int8.overhead == CTRANSLATE2_CPU_WORKER_OVERHEAD < CPU_WORKER_OVERHEAD
    on_gpu = replica(size, "auto", "cuda:0", GenerationLimits(), quantization="int8_float16")
    assert on_gpu.kv_cache == 2 * 12 * 768 * 1024 * 2 and on_gpu.overhead == CUDA_WORKER_OVERHEAD


def test_cpu_slots_fit_in_host_memory(write_layout: LayoutFactory,
                                      tiny_model_dir: Path) -> None:
    layout = load_layout(write_layout(pools={"small": {"bind": "127.0.0.1:9101",
                                                       "slots": ["cpu", "cpu", "cpu"]}}))
    [cpu] = fit_report(layout)
    one = cpu.replicas["small"]
    assert one is not None and cpu.total_bytes is not None
    assert cpu.device == "cpu" and cpu.total_bytes == psutil.virtual_memory().total
    assert cpu.slots == (("small", 0), ("small", 1), ("small", 2))
    assert cpu.needed_bytes == 3 * one.total
    assert cpu.fits("small") == cpu.total_bytes // one.total
    assert cpu.oversubscribed is False
    assert oversubscription_warnings(layout) == []
    assert cpu.to_json()["pools"]["small"]["replicas_fit"] == cpu.fits("small")


def test_a_model_too_big_for_the_host_is_reported_and_warned(tmp_path: Path) -> None:
    huge = config_only(tmp_path / "huge", n_layer=96, n_embd=32_768)  # about 1.2T parameters
    path = tmp_path / "layout.yaml"
    path.write_text(yaml.safe_dump(layout_document(
        huge, pools={"huge": {"bind": "127.0.0.1:9101", "slots": ["cpu", "cpu"]}})))
    layout = load_layout(path)
    [cpu] = fit_report(layout)
    assert cpu.fits("huge") == 0 and cpu.oversubscribed is True
    [warning] = oversubscription_warnings(layout)
    assert warning.startswith("warning: cpu is oversubscribed: its 2 workers need about ")


def fake_nvidia_smi(folder: Path, rows: list[str]) -> None:
    """An ``nvidia-smi`` on PATH that prints these CSV rows for --query-gpu."""
    script = folder / "nvidia-smi"
    # Shell built-ins only: the tests put nothing else on PATH.
    echo = "".join(f"echo '{row}'; " for row in rows)
    script.write_text(f'#!/bin/sh\ncase "$1" in --query-gpu=*) {echo};; esac\n')
    script.chmod(0o755)


def test_gpu_memory_comes_from_nvidia_smi_counted_as_the_workers_see_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, ["0, GPU-aaa, 100, 16384", "1, GPU-bbb, 200, 81920",
                               "2, GPU-ccc, [N/A], [N/A]"])
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert {n: g.total // 2**20 for n, g in gpu_memory().items()} == {0: 16384, 1: 81920}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb,0")
    assert {n: g.total // 2**20 for n, g in gpu_memory().items()} == {0: 81920, 1: 16384}


def test_gpu_slots_against_nvidia_smi_or_unknown_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpt2 = config_only(tmp_path / "gpt2")
    path = tmp_path / "layout.yaml"
    path.write_text(yaml.safe_dump(layout_document(gpt2, pools={"small": {
        "dtype": "float16", "bind": "127.0.0.1:9101", "slots": ["cuda:0"] * 3 + ["cuda:1"]}})))
    layout = load_layout(path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: unknown, never guessed
    assert [(f.device, f.total_bytes, f.oversubscribed) for f in fit_report(layout)] == [
        ("cuda:0", None, None), ("cuda:1", None, None)]
    assert oversubscription_warnings(layout) == []

    fake_nvidia_smi(tmp_path, ["0, GPU-aaa, 0, 2048", "1, GPU-bbb, 0, 81920"])
    small, big = fit_report(layout)
    one = small.replicas["small"]
    assert one is not None and 2 * 2**30 // one.total == small.fits("small") == 2
    assert small.oversubscribed is True and big.oversubscribed is False
    assert [w.split(":", 2)[1] for w in oversubscription_warnings(layout)] == [" cuda"]
    assert "cuda:0 is oversubscribed: its 3 workers" in oversubscription_warnings(layout)[0]
