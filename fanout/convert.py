"""Convert a pool's model for CTranslate2 once, into a cache keyed by what it is made of.

The model folder (safetensors, config, tokenizer) stays the one source. A ``ctranslate2``
pool serves a converted copy kept under ``$FANOUT_CACHE_DIR/ctranslate2/`` (default
``~/.cache/fanout``), in a folder named by the digest of the model's files, the
quantization and the CTranslate2 version: a changed file, another quantization or another
CTranslate2 is another folder, so a stale conversion is never served.

Who converts:
- ``fanout convert`` (``python -m fanout convert``) ahead of time; the container image
  does this at build, so a pod never converts at start-up;
- the worker tier's gunicorn master, before it forks, when the folder is missing: it runs
  this module as a child process, so the master itself never imports torch or touches
  CUDA, and one conversion serves every worker. A file lock keeps two servers of the same
  model from converting at once; a conversion is written aside and renamed into place,
  so a reader never sees half of one.

Importing this module is cheap and torch-free; only ``convert`` imports the converter.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from fanout.layout import Layout, Model, Pool
from fanout.model_files import ModelLoadError, model_folder, weights_files

CACHE_ENV = "FANOUT_CACHE_DIR"
# What the converted folder records about the model, beside CTranslate2's own files.
MANIFEST = "fanout.json"
# The files a conversion is made from; anything else in the folder (a model card) is not.
_SOURCE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "vocab.json",
                 "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json")


class ConversionError(RuntimeError):
    """The model cannot be served by CTranslate2; the message says why and what to do."""


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fanout"


def source_digest(folder: Path, allow_pickle: bool) -> str:
    """sha256 over the names and contents of the files a conversion reads."""
    files = sorted({*(folder / name for name in _SOURCE_FILES if (folder / name).is_file()),
                    *weights_files(folder, allow_pickle)})
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def converted_path(model: Model, quantization: str) -> Path:
    """Where this model's conversion lives (whether or not it exists yet)."""
    folder = model_folder(model)
    digest = source_digest(folder, model.allow_pickle)
    version = metadata.version("ctranslate2")
    key = f"{folder.name}-{digest[:16]}-{quantization}-ct2-{version}"
    return cache_root() / "ctranslate2" / key


def is_converted(target: Path) -> bool:
    return (target / MANIFEST).is_file()


def read_manifest(target: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((target / MANIFEST).read_text())
    return manifest


def ensure_converted(model: Model, quantization: str) -> tuple[Path, float | None]:
    """The model's converted folder, converting it here first when missing.

    Returns the folder and the seconds the conversion took (None: it was cached).
    """
    target = converted_path(model, quantization)
    if is_converted(target):
        return target, None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = (target.parent / f"{target.name}.lock").open("a")
    except OSError as error:  # not writable: a read-only root, another user's folder
        raise ConversionError(
            f"no CTranslate2 conversion of {model.source} ({quantization}) in "
            f"{target.parent}, and it cannot be written there ({error.strerror or error}); "
            f"run `fanout convert` where it can (the container image does at build), or "
            f"point ${CACHE_ENV} at a writable folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if is_converted(target):  # another server converted it while we waited
            return target, None
        started = time.perf_counter()
        _convert_aside(model, quantization, target)
        return target, time.perf_counter() - started


def _convert_aside(model: Model, quantization: str, target: Path) -> None:
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        convert(model, quantization, partial)
        partial.chmod(0o755)  # mkdtemp's 0700 would hide it from a server run as another user
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def convert(model: Model, quantization: str, output: Path) -> None:
    """Write the CTranslate2 model, a ``tokenizer.json`` and the manifest into ``output``."""
    # Torch and transformers load here only: in the conversion process, never in a server.
    from ctranslate2.converters import TransformersConverter
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = model_folder(model)
    weights = weights_files(folder, model.allow_pickle)
    try:
        TransformersConverter(str(folder)).convert(
            str(output), quantization=quantization, force=True)
    except (ValueError, NotImplementedError, KeyError) as error:
        raise ConversionError(
            f"CTranslate2 cannot convert {model.source} ({folder}): {error}; serve it "
            f"with `engine: transformers` instead") from error
    # The lean worker tokenises with the `tokenizers` library, which reads tokenizer.json.
    AutoTokenizer.from_pretrained(folder, local_files_only=True).save_pretrained(
        output / "tokenizer")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    manifest = {
        "source": model.source,
        "folder": str(folder),
        "digest": source_digest(folder, model.allow_pickle),
        "quantization": quantization,
        "ctranslate2": metadata.version("ctranslate2"),
        "model_type": config.model_type,
        "window": int(getattr(config, "n_positions", 0) or config.max_position_embeddings),
        "eos_token_id": int(config.eos_token_id),
        "parameters": _parameters(weights),
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _parameters(weights: list[Path]) -> int | None:
    """The parameter count, read off the safetensors headers (no weights are loaded)."""
    if any(path.suffix != ".safetensors" for path in weights):
        return None
    total = 0
    for path in weights:
        with path.open("rb") as stream:
            header = json.loads(stream.read(int.from_bytes(stream.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for size in entry["shape"]:
                    count *= size
                total += count
    return total


def prepare(pool: Pool, layout_source: Path) -> Path:
    """For a gunicorn master: the pool's converted folder, converted by a child process
    when missing. Exits with the child's message when the model cannot be converted."""
    assert pool.quantization is not None, "a ctranslate2 pool has a quantization"
    try:
        target = converted_path(pool.model, pool.quantization)
    except ModelLoadError as error:
        raise SystemExit(f"fanout: pool {pool.name}: {error}") from None
    if is_converted(target):
        return target
    done = subprocess.run([sys.executable, "-m", "fanout", "convert", "--layout",
                           str(layout_source), pool.name], check=False)
    if done.returncode != 0 or not is_converted(target):
        raise SystemExit(f"fanout: pool {pool.name}: converting {pool.model.source} for "
                         f"CTranslate2 failed (see above)")
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pools", nargs="*", metavar="POOL",
                        help="pools to convert (default: every ctranslate2 pool)")


def run(args: argparse.Namespace, layout: Layout) -> int:
    """``fanout convert [--layout FILE] [POOL ...]``: convert the layout's ctranslate2 pools."""
    unknown = [name for name in args.pools if name not in layout.pools]
    if unknown:
        raise argparse.ArgumentError(None, f"no pool {unknown[0]!r} in {layout.source} "
                                           f"(pools: {', '.join(layout.pools)})")
    chosen = [layout.pools[name] for name in args.pools] or list(layout.pools.values())
    for pool in chosen:
        if pool.engine != "ctranslate2":
            if args.pools:
                print(f"pool {pool.name}: engine {pool.engine}, nothing to convert")
            continue
        assert pool.quantization is not None
        try:
            target, seconds = ensure_converted(pool.model, pool.quantization)
        except (ModelLoadError, ConversionError) as error:
            print(f"fanout convert: pool {pool.name}: {error}", file=sys.stderr)
            return 2
        how = "cached" if seconds is None else f"converted in {seconds:.1f}s"
        print(f"pool {pool.name}: {pool.model.source} ({pool.quantization}) -> {target} "
              f"({how})")
    return 0
