"""Where a pool's model files are, and whether the folder holds a whole model.

Torch-free: the conversion cache (``fanout.convert``) and both engines find the folder
through here, and the gunicorn master digests it before the workers fork.
"""

from __future__ import annotations

from pathlib import Path

from fanout.layout import Model


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded; the message says what is missing."""


def model_folder(model: Model) -> Path:
    """The local folder to load: the layout's folder, or a hub id's snapshot in the cache.

    A worker never downloads: N workers booting at once would race for the same files,
    and a serving host may have no route out. Fetching is a separate, explicit step.
    """
    if model.path is not None:
        folder = model.path
    else:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(model.source, local_files_only=True))
        except LocalEntryNotFoundError:
            raise ModelLoadError(
                f"hub model {model.source!r} is not in the local cache "
                f"({constants.HF_HUB_CACHE}); fetch it into models/ with "
                f"`fanout fetch {model.source}` on a host that can reach the hub, "
                "then point the pool's model at that folder") from None
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        missing.append("weights (*.safetensors)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        missing.append("tokenizer (tokenizer.json or vocab.json + merges.txt)")
    if missing:
        raise ModelLoadError(f"model folder {folder} lacks {', '.join(missing)}")
    return folder


def weights_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """The weights to load: safetensors, or pickle files only where the layout allows them."""
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return safetensors
    if not allow_pickle:
        raise ModelLoadError(
            f"{folder} holds only pickle weights (*.bin), which can run code when "
            "loaded; convert them to safetensors or set allow_pickle: true on the pool")
    return sorted(folder.glob("*.bin"))
