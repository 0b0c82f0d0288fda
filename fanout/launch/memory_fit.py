"""How many replicas of a pool's model fit on each device of a layout: a torch-free estimate.

    fanout fit [LAYOUT]

One replica (one worker) needs its weights, a KV cache for the longest sequence the layout
lets through, and the runtime's own overhead. The figures come from files and tools the
supervisor may touch without initialising CUDA: the safetensors headers (exact tensor
shapes, read without loading a byte of weights) or else ``config.json``, ``psutil`` for
host memory and ``nvidia-smi`` for GPU memory. An unknown figure stays unknown (``None``),
never guessed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from fanout.layout import GenerationLimits, Layout, Model, Pool

MiB = 2**20
# A CPU worker's memory beyond its weights: the Python interpreter, torch, transformers,
# the tokenizer and the app, after loading and one warm-up generation. Measured with
# torch 2.13.0+cpu, transformers 5.23.0, one torch thread: the RSS of real workers was
# 383 MiB for a 3.3M-parameter GPT-2 (12.7 MiB of float32 weights) and 432 MiB for a
# 16.2M one (61.6 MiB), so 370 MiB both times. RSS counts shared library pages in every
# worker, so summing it over workers errs on the safe side.
CPU_WORKER_OVERHEAD = 370 * MiB
# The same for a CTranslate2 worker, which loads neither torch nor transformers: 94 MiB of
# RSS for the shipped small model (7.6 MB of int8 weights), measured with ctranslate2
# 4.8.5 and one thread, so about 85 MiB.
CTRANSLATE2_CPU_WORKER_OVERHEAD = 85 * MiB
# A CUDA worker's device memory beyond weights and cache: the CUDA context and the
# caching allocator's slack. Typically 300-600 MiB per process depending on GPU, driver and
# lazy module loading; not measured here (no GPU), so the upper half of that range.
CUDA_WORKER_OVERHEAD = 500 * MiB
_HALF = ("float16", "bfloat16")
# GPT-2 checkpoints may carry the causal-mask buffers; transformers drops them at load.
_BUFFER = re.compile(r"(^|\.)attn\.(masked_)?bias$")


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    n_layer: int
    n_embd: int
    n_positions: int
    counted_from: str  # "safetensors header" (exact) or "config.json" (GPT-2 formula)


@dataclass(frozen=True)
class Replica:
    """One worker's estimated memory on its device, in bytes."""

    weights: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


@dataclass(frozen=True)
class DeviceFit:
    """One device: the slots a layout puts on it against what it holds."""

    device: str
    total_bytes: int | None  # None: the tool that would tell is not on this host
    slots: tuple[tuple[str, int], ...]  # (pool, slot index)
    replicas: Mapping[str, Replica | None]  # per pool on this device; None: model unreadable

    @property
    def needed_bytes(self) -> int | None:
        sizes = [self.replicas[pool] for pool, _ in self.slots]
        return sum(r.total for r in sizes if r) if all(sizes) else None

    def fits(self, pool: str) -> int | None:
        """How many replicas of ``pool``'s model this device holds on its own."""
        replica = self.replicas[pool]
        if replica is None or self.total_bytes is None:
            return None
        return self.total_bytes // replica.total

    @property
    def oversubscribed(self) -> bool | None:
        needed = self.needed_bytes
        if needed is None or self.total_bytes is None:
            return None
        return needed > self.total_bytes

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "total_bytes": self.total_bytes,
                "slots": [f"{pool}[{index}]" for pool, index in self.slots],
                "needed_bytes": self.needed_bytes, "oversubscribed": self.oversubscribed,
                "pools": {pool: {"replica_bytes": r.total if r else None,
                                 "weights_bytes": r.weights if r else None,
                                 "kv_cache_bytes": r.kv_cache if r else None,
                                 "overhead_bytes": r.overhead if r else None,
                                 "replicas_fit": self.fits(pool)}
                          for pool, r in self.replicas.items()}}


def model_size(model: Model) -> ModelSize | None:
    """The model's parameter count and shape, or None when its files cannot be read."""
    folder = _local_folder(model)
    if folder is None:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        shape = (int(config["n_layer"]), int(config["n_embd"]), int(config["n_positions"]))
        counted = _header_parameters(sorted(folder.glob("*.safetensors")))
        source = "safetensors header"
        if counted is None:
            counted, source = _formula_parameters(config), "config.json"
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ModelSize(counted, *shape, counted_from=source)


def _local_folder(model: Model) -> Path | None:
    if model.path is not None:
        return model.path
    try:  # a hub id: only the local cache, as the workers do; huggingface_hub is torch-free
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model.source, local_files_only=True))
    except (ImportError, OSError, ValueError):
        return None


def _header_parameters(files: list[Path]) -> int | None:
    """Elements of every tensor in the safetensors files: the header alone says."""
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100 * MiB:  # a header is kilobytes; this is no safetensors file
                raise ValueError(f"{path}: implausible header length {length}")
            header = json.loads(handle.read(length))
        total += sum(math.prod(t["shape"]) for name, t in header.items()
                     if name != "__metadata__" and not _BUFFER.search(name))
    return total


def _formula_parameters(config: Mapping[str, Any]) -> int:
    """GPT-2's parameter count from its config (tied LM head, biases, two layer norms)."""
    layers, width = int(config["n_layer"]), int(config["n_embd"])
    inner = int(config.get("n_inner") or 4 * width)
    embeddings = (int(config["vocab_size"]) + int(config["n_positions"])) * width
    # attention qkv + projection, MLP in + out, their biases, two layer norms
    per_layer = 4 * width * width + 2 * width * inner + 9 * width + inner
    return embeddings + layers * per_layer + 2 * width  # + the final layer norm


def dtype_bytes(dtype: str, device: str) -> int:
    """Bytes per parameter as the worker loads it (``auto``: half on a GPU, else float32)."""
    if dtype in _HALF or (dtype == "auto" and device.startswith("cuda:")):
        return 2
    return 4


def kv_window(size: ModelSize, limits: GenerationLimits) -> int:
    """The longest sequence a worker holds: context + new tokens, cut to the window.

    A GPT-2 token covers at least one byte of text, so the context is at most
    ``context_bytes`` tokens before the worker keeps only what fits the window.
    """
    return min(size.n_positions, limits.context_bytes + limits.length)


def quantized_bytes(quantization: str) -> tuple[int, int]:
    """Bytes per weight and per cached activation of a CTranslate2 compute type."""
    weight = 1 if quantization.startswith("int8") else 4 if quantization == "float32" else 2
    activation = 4 if quantization in ("int8", "int8_float32", "float32") else 2
    return weight, activation


def replica(size: ModelSize, dtype: str, device: str, limits: GenerationLimits,
            quantization: str | None = None) -> Replica:
    """One worker of the transformers engine (``dtype``) or of CTranslate2 (``quantization``)."""
    if quantization is None:
        weight = activation = dtype_bytes(dtype, device)
        cpu_overhead = CPU_WORKER_OVERHEAD
    else:
        weight, activation = quantized_bytes(quantization)
        cpu_overhead = CTRANSLATE2_CPU_WORKER_OVERHEAD
    # Keys and values, every layer, one sequence: sync workers generate one at a time.
    kv_cache = 2 * size.n_layer * size.n_embd * kv_window(size, limits) * activation
    overhead = CUDA_WORKER_OVERHEAD if device.startswith("cuda:") else cpu_overhead
    return Replica(weights=size.parameters * weight, kv_cache=kv_cache, overhead=overhead)


@dataclass(frozen=True)
class GpuMemory:
    used: int
    total: int


def device_memory(devices: Iterable[str]) -> dict[str, int | None]:
    """Total bytes of each device: host RAM for ``cpu``, nvidia-smi for ``cuda:N``."""
    wanted = set(devices)
    gpus = gpu_memory() if any(d.startswith("cuda:") for d in wanted) else {}
    return {device: psutil.virtual_memory().total if device == "cpu"
            else _total(gpus.get(int(device.split(":", 1)[1]))) for device in wanted}


def _total(gpu: GpuMemory | None) -> int | None:
    return gpu.total if gpu else None


def gpu_memory() -> dict[int, GpuMemory]:
    """cuda:N -> its memory, counting GPUs as the workers do (after CUDA_VISIBLE_DEVICES).

    Empty when nvidia-smi is missing or fails: the master must not ask CUDA itself.
    """
    listing = nvidia_smi("--query-gpu=index,uuid,memory.used,memory.total")
    if listing is None:
        return {}
    by_name = {}
    for index, uuid, *figures in listing:
        with contextlib.suppress(ValueError):  # "[N/A]" on some virtual GPUs: no figure
            by_name[index] = by_name[uuid] = GpuMemory(*(int(f) * MiB for f in figures))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    order = ([g.strip() for g in visible.split(",") if g.strip()] if visible is not None
             else [row[0] for row in listing])
    return {n: by_name[name] for n, name in enumerate(order) if name in by_name}


def nvidia_smi(query: str) -> list[list[str]] | None:
    """Rows of an ``nvidia-smi --query-...`` in CSV, or None where it cannot answer."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=15, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return [[cell.strip() for cell in line.split(",")]
            for line in result.stdout.splitlines() if line.strip()]


def fit_report(layout: Layout, pools: Iterable[Pool] | None = None) -> list[DeviceFit]:
    """Per device used by ``pools`` (default: all of the layout's), in first-use order."""
    chosen = list(pools) if pools is not None else list(layout.pools.values())
    sizes = {pool.name: model_size(pool.model) for pool in chosen}
    slots: dict[str, list[tuple[str, int]]] = {}
    replicas: dict[str, dict[str, Replica | None]] = {}
    for pool in chosen:
        size = sizes[pool.name]
        for slot in pool.slots:
            slots.setdefault(slot.device, []).append((pool.name, slot.index))
            replicas.setdefault(slot.device, {})[pool.name] = (
                replica(size, pool.dtype, slot.device, layout.limits, pool.quantization)
                if size else None)
    totals = device_memory(slots)
    return [DeviceFit(device, totals[device], tuple(used), replicas[device])
            for device, used in slots.items()]


def oversubscription_warnings(layout: Layout) -> list[str]:
    """One line per device whose slots need more memory than it has."""
    return [f"warning: {fit.device} is oversubscribed: its {_workers_need(len(fit.slots))} "
            f"about {_gib(fit.needed_bytes)} but it has {_gib(fit.total_bytes)} "
            f"(fanout fit {layout.source} details it)"
            for fit in fit_report(layout) if fit.oversubscribed]


def describe_fit(fits: Iterable[DeviceFit]) -> str:
    """A few human lines: per device and pool, replica size and how many fit."""
    lines = []
    for fit in fits:
        verdict = {True: "OVERSUBSCRIBED", False: "fits", None: "unknown"}[fit.oversubscribed]
        memory = (_gib(fit.total_bytes) if fit.total_bytes
                  else "memory unknown (nvidia-smi absent or silent)")
        lines.append(f"  {fit.device}: {memory}, {_workers_need(len(fit.slots))} "
                     f"{_gib(fit.needed_bytes)}: {verdict}")
        for pool, r in fit.replicas.items():
            if r is None:
                lines.append(f"    {pool}: model size unknown (files unreadable)")
                continue
            count = fit.fits(pool)
            lines.append(f"    {pool}: {_gib(r.total)} a replica (weights {_gib(r.weights)}, "
                         f"KV cache {_gib(r.kv_cache)}, runtime {_gib(r.overhead)}); "
                         f"{'?' if count is None else count} fit")
    return "\n".join(lines)


def _workers_need(count: int) -> str:
    return "1 worker needs" if count == 1 else f"{count} workers need"


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**30:.2f} GiB"


def run(args: argparse.Namespace, layout: Layout) -> int:
    """``fanout fit [LAYOUT]``: the estimate for every device of the layout."""
    print(f"memory fit for {layout.source}\n{describe_fit(fit_report(layout))}")
    return 0
