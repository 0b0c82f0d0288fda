"""Download GPT-2 checkpoints from the model hub into ``models/``, on a host that can.

    fanout fetch gpt2 gpt2-medium [--dest models]

Only what fanout serves is fetched (config, safetensors weights, tokenizer files), with
the hub client's progress bars. Where the hub cannot be reached (``HF_HUB_OFFLINE=1``,
or no route out) it stops at once and says so; then run it on a host that can and copy
the folders over. Point a pool at one with ``model: ./models/gpt2``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVED_FILES = ["config.json", "generation_config.json", "*.safetensors", "tokenizer.json",
                "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"]
CHECK_TIMEOUT = 10.0


class FetchError(RuntimeError):
    """The hub cannot be reached or lacks the model; the message says what to do."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def fetch(repo_id: str, dest: Path) -> Path:
    """Fetch ``repo_id``'s served files into ``dest/<last part of the id>``."""
    if _offline():
        raise FetchError("HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it on a "
                         "host that can reach the hub")
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = HfApi().model_info(repo_id, timeout=CHECK_TIMEOUT, files_metadata=False)
    except RepositoryNotFoundError:
        raise FetchError(f"the hub has no model {repo_id!r}") from None
    except Exception as exc:  # DNS, TLS, proxy, HTTP: any of them means no fetch from here
        raise FetchError(f"cannot reach the hub to fetch {repo_id!r} ({type(exc).__name__}); "
                         "run this on a host that can, then copy the folder under models/ "
                         "here") from None
    files = {s.rfilename for s in info.siblings or []}
    if not any(name.endswith(".safetensors") for name in files):
        raise FetchError(f"{repo_id!r} has no safetensors weights; fanout does not load "
                         "pickle weights by default")
    target = dest / repo_id.rsplit("/", 1)[-1]
    snapshot_download(repo_id, local_dir=target, allow_patterns=SERVED_FILES)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", help="hub ids, e.g. gpt2 gpt2-medium")
    parser.add_argument("--dest", type=Path, default=REPO / "models")


def run(args: argparse.Namespace) -> int:
    """``fanout fetch ID ...``: fetch each model, stopping at the first that cannot be."""
    for repo_id in args.models:
        try:
            print(f"fetched {repo_id} -> {fetch(repo_id, args.dest)}")
        except FetchError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0

