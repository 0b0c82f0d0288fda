"""What the deploy tests share: the repository's paths and the layouts written for images."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from fanout.layout import Bind, Layout, Pool, load_layout

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE_APP = "/app"  # where the Dockerfile puts the project inside the image
IMAGE_MODELS = f"{IMAGE_APP}/models"
IMAGE_UID = 10001


def load_image_layout(text: str, directory: Path) -> Layout:
    """Load a layout written for the image on this machine: its model folders are image
    paths (/app/models/NAME), read here from the repository's models folder."""
    path = directory / "gpu_layout.yaml"
    path.write_text(text.replace(IMAGE_MODELS, str(REPO / "models")), encoding="utf-8")
    return load_layout(path)


def image_model_folders(text: str) -> set[str]:
    """The image paths under /app/models that a layout names."""
    return {word.rstrip(",}") for word in text.split()
            if word.startswith(IMAGE_MODELS + "/")}


def pool_addresses(pool: Pool) -> list[tuple[str, int]]:
    """(host, port) of each server through which the front reaches a pool."""
    addresses = []
    for url in pool.urls:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        addresses.append((parts.hostname, parts.port))
    return addresses


def loopback(bind: Bind) -> bool:
    """Whether only the bind's own network namespace reaches it (a container's, a pod's)."""
    return bind.host == "localhost" or ipaddress.ip_address(bind.host).is_loopback
