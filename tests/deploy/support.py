"""What the deploy tests share: the repository's paths, the layouts written for images,
and what the Dockerfile copies and converts."""

from __future__ import annotations

import io
import ipaddress
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dockerfile_parse import DockerfileParser

from fanout.convert import converted_path
from fanout.layout import Bind, Layout, Pool, load_layout

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE_APP = "/app"  # where the Dockerfile puts the project inside the image
IMAGE_MODELS = f"{IMAGE_APP}/models"
IMAGE_UID = 10001
# How a build step may run the converter (the image runs the project from source).
CONVERTERS = (("python", "-m", "fanout", "convert"), ("fanout", "convert"))

Instruction = dict[str, Any]


def parse_dockerfile() -> DockerfileParser:
    # From memory: the parser reads lazily, and writes back to a path it was given.
    return DockerfileParser(fileobj=io.BytesIO((REPO / "Dockerfile").read_bytes()))


def instructions(parser: DockerfileParser) -> list[Instruction]:
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def copies(parser: DockerfileParser) -> dict[str, str]:
    """COPY source -> destination (one source each, as the Dockerfile writes them)."""
    pairs = [shlex.split(i["value"]) for i in instructions(parser) if i["instruction"] == "COPY"]
    assert all(len(pair) == 2 for pair in pairs), pairs
    return {source: destination for source, destination in pairs}


def build_conversions(parser: DockerfileParser) -> list[tuple[int, str, list[str]]]:
    """(instruction position, layout as an image path, pools named) of every
    `fanout convert` that a RUN of the build runs."""
    found = []
    for position, item in enumerate(instructions(parser)):
        if item["instruction"] != "RUN":
            continue
        for command in item["value"].split("&&"):
            words = shlex.split(command)
            for converter in CONVERTERS:
                if tuple(words[:len(converter)]) != converter:
                    continue
                args = words[len(converter):]
                layout = parser.envs["FANOUT_LAYOUT"]
                if "--layout" in args:
                    at = args.index("--layout")
                    layout = args[at + 1]
                    del args[at:at + 2]
                found.append((position, layout, args))
    return found


def load_image_layout(text: str, directory: Path) -> Layout:
    """Load a layout written for the image on this machine: its model folders are image
    paths (/app/models/NAME), read here from the repository's models folder."""
    path = directory / "gpu_layout.yaml"
    path.write_text(text.replace(IMAGE_MODELS, str(REPO / "models")), encoding="utf-8")
    return load_layout(path)


def load_layout_in_image(image_path: str, parser: DockerfileParser, directory: Path) -> Layout:
    """A layout file that the Dockerfile copies, loaded from the repository: as it is when
    its model folders are relative to it (the shipped one), else as an image layout."""
    [source] = [s for s, destination in copies(parser).items() if destination == image_path]
    if IMAGE_MODELS not in (REPO / source).read_text():
        return load_layout(REPO / source)
    directory.mkdir(parents=True, exist_ok=True)
    return load_image_layout((REPO / source).read_text(), directory)


def conversions(layout: Layout, pools: list[str] | None = None) -> set[str]:
    """The cache folders (model, files' digest, quantization, CTranslate2 version) that the
    layout's ctranslate2 pools, or those named, serve from."""
    return {converted_path(pool.model, pool.quantization).name
            for pool in layout.pools.values()
            if pool.engine == "ctranslate2" and pool.quantization is not None
            and (not pools or pool.name in pools)}


def baked_conversions(directory: Path) -> set[str]:
    """What the build converts into the image's cache."""
    parser = parse_dockerfile()
    baked: set[str] = set()
    for index, (_, layout, pools) in enumerate(build_conversions(parser)):
        baked |= conversions(load_layout_in_image(layout, parser, directory / str(index)), pools)
    return baked


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
