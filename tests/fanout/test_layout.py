"""The layout loader: typed objects from a good file, a precise error from a bad one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanout.layout import (
    DEFAULT_LAYOUT,
    FRONT_BIND_ENV,
    LayoutError,
    describe,
    load_layout,
    pool_name,
)
from tests.conftest import SHIPPED_MODELS, LayoutFactory

REPO = Path(__file__).resolve().parents[2]


def test_a_layout_becomes_frozen_typed_objects(write_layout: LayoutFactory,
                                               tiny_model_dir: Path) -> None:
    layout = load_layout(write_layout(pools={"small": {
        "bind": "127.0.0.1:9101", "slots": [{"device": "cpu", "threads": 2}, "cpu"]}}))

    pool = layout.default_pool
    assert pool.name == "small" and pool.model.path == tiny_model_dir
    assert [(s.index, s.device, s.threads) for s in pool.slots] == [(0, "cpu", 2), (1, "cpu", 1)]
    assert str(pool.bind) == "127.0.0.1:9101" and pool.bind.url == "http://127.0.0.1:9101"
    assert layout.front.bind.port == 18000 and layout.defaults.n_samples == 3
    assert layout.defaults.stop_at == "word"
    with pytest.raises(AttributeError):
        pool.name = "other"  # type: ignore[misc]


def test_the_front_bind_can_be_overridden_by_the_environment(
        write_layout: LayoutFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FRONT_BIND_ENV, "0.0.0.0:9000")
    layout = load_layout(write_layout())
    assert str(layout.front.bind) == "0.0.0.0:9000"
    assert layout.front.bind.url == "http://127.0.0.1:9000"


def test_model_folders_are_relative_to_the_layout_file(tmp_path: Path,
                                                       tiny_model_dir: Path) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "mine")
    (tmp_path / "layout.yaml").write_text(
        "pools:\n  a:\n    model: ./models/mine\n    bind: 127.0.0.1:9101\n    slots: [cpu]\n")
    assert load_layout(tmp_path / "layout.yaml").default_pool.model.path == (
        tmp_path / "models" / "mine")


def test_a_hub_id_is_kept_as_a_hub_id(write_layout: LayoutFactory) -> None:
    pool = load_layout(write_layout(pools={"a": {
        "model": "openai-community/gpt2", "bind": "127.0.0.1:9101", "slots": ["cuda:0"]}})
    ).default_pool
    assert pool.model.path is None and pool.model.source == "openai-community/gpt2"


def mutate(tiny: Path, change: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {
        "front": {"bind": "127.0.0.1:8000"},
        "pools": {"small": {"model": str(tiny), "bind": "127.0.0.1:8101", "slots": ["cpu"]}},
    }
    for path, value in change.items():
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return document


_DELETE = object()


@pytest.mark.parametrize(("change", "key", "problem"), [
    ({"front.colour": "red"}, "front.colour", "unknown key"),
    ({"pools.small.slots": [{"device": "gpu0"}]}, "pools.small.slots[0].device",
     "is not a device"),
    ({"pools.small.slots": ["cuda:-1"]}, "pools.small.slots[0].device", "is not a device"),
    ({"pools.small.slots": []}, "pools.small.slots", "at least one worker slot"),
    ({"pools.small.slots": [{"device": "cpu", "threads": 0}]}, "pools.small.slots[0].threads",
     "outside 1..1024"),
    ({"pools.small.bind": "127.0.0.1:8000"}, "pools.small.bind",
     "already bound by front.bind"),
    ({"pools.small.bind": "127.0.0.1"}, "pools.small.bind", "is not 'host:port'"),
    ({"pools.small.bind": "example.com:80"}, "pools.small.bind", "not an IP address"),
    ({"pools.small.hosts": []}, "pools.small.hosts", "at least one 'host:port'"),
    ({"pools.small.hosts": "10.0.0.2:8101"}, "pools.small.hosts", "at least one 'host:port'"),
    ({"pools.small.hosts": ["10.0.0.2"]}, "pools.small.hosts[0]", "is not 'host:port'"),
    ({"pools.small.hosts": ["0.0.0.0:8101"]}, "pools.small.hosts[0]",
     "wildcard bind address"),
    ({"pools.small.hosts": ["a:1", "b_c:1"]}, "pools.small.hosts[1]",
     "'b_c' is not an IP address or a host name"),
    ({"pools.small.hosts": ["a:1", "a:1"]}, "pools.small.hosts[1]", "listed twice"),
    ({"front.host_check_seconds": 0}, "front.host_check_seconds", "outside [0.1, 3600]"),
    ({"pools.small.model": "./missing"}, "pools.small.model", "does not exist"),
    ({"pools.small.dtype": "int4"}, "pools.small.dtype", "is not one of"),
    ({"pools.small.dtype": "float16"}, "pools.small.dtype", "float16 needs GPU slots"),
    ({"pools.small.worker_timeout": 5}, "pools.small.worker_timeout",
     "must exceed generation.limits.max_time"),
    ({"pools.small.model": _DELETE}, "pools.small.model", "is required"),
    ({"pools": {}}, "pools", "at least one pool"),
    ({"pools.Big Pool": {}}, "pools.Big Pool", "pool names are"),
    ({"front.threads": "many"}, "front.threads", "must be an integer"),
    ({"front.threads": 4, "front.max_inflight": 4}, "front.max_inflight",
     "must stay below front.threads"),
    ({"front.max_queued_samples": -1}, "front.max_queued_samples", "outside 0.."),
    ({"front.cors_origins": "https://a.example"}, "front.cors_origins", "must be a list"),
    ({"front.cors_origins": ["https://a.example/editor"]}, "front.cors_origins[0]",
     "is not an origin"),
    ({"front.cors_origins": ["a.example"]}, "front.cors_origins[0]", "is not an origin"),
    ({"front.api_keys_file": "./no-such-keys"}, "front.api_keys_file",
     "is not a readable file"),
    ({"generation.defaults.top_p": 0}, "generation.defaults.top_p", "outside (0, 1]"),
    ({"generation.defaults.n_samples": 9}, "generation.defaults.n_samples", "outside 1..8"),
    ({"generation.defaults.stop_at": "clause"}, "generation.defaults.stop_at",
     "'clause' is not one of none, word, sentence, line, paragraph"),
    ({"pools.small.engine": "vllm"}, "pools.small.engine", "is not one of ctranslate2"),
    ({"pools.small.quantization": "int8"}, "pools.small.quantization",
     "applies to the ctranslate2 engine"),
    ({"pools.small.engine": "ctranslate2", "pools.small.dtype": "float32"},
     "pools.small.dtype", "applies to the transformers engine"),
    ({"pools.small.engine": "ctranslate2", "pools.small.quantization": "int4"},
     "pools.small.quantization", "is not one of"),
    ({"pools.small.engine": "ctranslate2", "pools.small.quantization": "float16"},
     "pools.small.quantization", "float16 needs GPU slots"),
    ({"pools.small.slots": [{"device": "cpu", "cpus": 0}]}, "pools.small.slots[0].cpus",
     "must be a list of CPU core numbers"),
    ({"pools.small.slots": [{"device": "cpu", "cpus": [-1]}]}, "pools.small.slots[0].cpus",
     "must be a list of CPU core numbers"),
    ({"pools.small.slots": [{"device": "cpu", "cpus": [1, 1]}]}, "pools.small.slots[0].cpus",
     "lists a core twice"),
    ({"pools.small.slots": [{"device": "cpu", "cpus": [0], "threads": 2}]},
     "pools.small.slots[0].threads", "no more threads than the cores it is pinned to"),
    ({"pools.small.aliases": "gpt2"}, "pools.small.aliases", "must be a list of names"),
    ({"pools.small.aliases": ["gpt2", 2]}, "pools.small.aliases[1]", "2 is not an alias"),
    ({"pools.small.aliases": ["gpt2//medium"]}, "pools.small.aliases[0]", "is not an alias"),
    ({"pools.small.aliases": ["/gpt2"]}, "pools.small.aliases[0]", "is not an alias"),
    ({"pools.small.aliases": ["gpt2", "gpt2"]}, "pools.small.aliases[1]", "listed twice"),
    ({"pools.small.aliases": ["small"]}, "pools.small.aliases[0]",
     "'small' is the name of pool small"),
    ({"pools.big": {"model": "gpt2", "bind": "127.0.0.1:8102", "slots": ["cpu"],
                    "aliases": ["gpt2", "small"]}},
     "pools.big.aliases[1]", "'small' is the name of pool small"),
    ({"pools.small.aliases": ["gpt2/medium"],
      "pools.big": {"model": "gpt2", "bind": "127.0.0.1:8102", "slots": ["cpu"],
                    "aliases": ["gpt2/medium"]}},
     "pools.big.aliases[0]", "'gpt2/medium' is already an alias of pool small"),
    ({"pools.small.batch": 2}, "pools.small.batch", "applies to the ctranslate2 engine"),
    ({"pools.small.batch": True}, "pools.small.batch", "must be an integer, not True"),
    ({"pools.small.engine": "ctranslate2", "pools.small.batch": 0}, "pools.small.batch",
     "0 is outside 1..64"),
    ({"pools.small.engine": "ctranslate2", "pools.small.batch": 65}, "pools.small.batch",
     "65 is outside 1..64"),
    ({"pools.small.engine": "ctranslate2", "pools.small.batch": "4"}, "pools.small.batch",
     "must be an integer, not '4'"),
    ({"pools.small.engine": "ctranslate2", "pools.small.batch": True}, "pools.small.batch",
     "must be an integer, not True"),
])
def test_every_problem_names_file_key_and_reason(
        tmp_path: Path, tiny_model_dir: Path, change: dict[str, Any], key: str,
        problem: str) -> None:
    path = tmp_path / "layout.yaml"
    path.write_text(yaml.safe_dump(mutate(tiny_model_dir, change), sort_keys=False))

    with pytest.raises(LayoutError) as caught:
        load_layout(path)

    assert caught.value.key == key
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{path}: {key}: ")


def test_aliases_name_their_pool_wherever_a_pool_name_goes(
        write_layout: LayoutFactory) -> None:
    layout = load_layout(write_layout(pools={
        "small": {"bind": "127.0.0.1:9101", "slots": ["cpu"],
                  "aliases": ["gpt2", "gpt2/small"]},
        "medium": {"bind": "127.0.0.1:9102", "slots": ["cpu"], "aliases": ["gpt2/medium"]},
        "large": {"bind": "127.0.0.1:9103", "slots": ["cpu"]}}))
    small, medium, large = layout.pools.values()

    assert small.aliases == ("gpt2", "gpt2/small") and large.aliases == ()
    assert list(layout.names) == ["small", "medium", "large", "gpt2", "gpt2/small",
                                  "gpt2/medium"]
    assert layout.pool_named("gpt2/medium") is medium and layout.pool_named("large") is large
    assert layout.pool_named("gpt2/large") is None
    assert [pool_name(layout.names, n) for n in ("gpt2/small", "medium", "nope")] == [
        "small", "medium", "nope"]
    assert "also named gpt2/medium" in describe(layout)


def test_engines_quantizations_and_pinned_cores(write_layout: LayoutFactory) -> None:
    layout = load_layout(write_layout(pools={
        "fast": {"bind": "127.0.0.1:9101", "engine": "ctranslate2", "dtype": None,
                 "slots": [{"device": "cpu", "cpus": [0, 1]}, {"device": "cpu", "cpus": [1],
                                                              "threads": 1}]},
        "gpu": {"bind": "127.0.0.1:9102", "engine": "ctranslate2", "dtype": None,
                "slots": ["cuda:0"]},
        "exact": {"bind": "127.0.0.1:9103", "engine": "ctranslate2", "dtype": None,
                  "quantization": "float32", "slots": ["cpu"]},
        "reference": {"bind": "127.0.0.1:9104", "slots": ["cpu"]}}))
    fast, gpu, exact, reference = layout.pools.values()
    # int8 on CPUs; int8 weights with float16 activations where every slot is a GPU
    assert (fast.engine, fast.quantization, fast.precision) == ("ctranslate2", "int8", "int8")
    assert gpu.quantization == "int8_float16" and exact.quantization == "float32"
    assert (reference.engine, reference.quantization) == ("transformers", None)
    assert reference.precision == "float32"
    # pinned to N cores, a worker gets N threads unless the slot asks for fewer
    assert [(s.cpus, s.threads) for s in fast.slots] == [((0, 1), 2), ((1,), 1)]


def test_batches_are_for_ctranslate2_pools(write_layout: LayoutFactory) -> None:
    layout = load_layout(write_layout(pools={
        "fast": {"bind": "127.0.0.1:9101", "engine": "ctranslate2", "dtype": None,
                 "slots": ["cpu"]},
        "wide": {"bind": "127.0.0.1:9102", "engine": "ctranslate2", "dtype": None,
                 "batch": 16, "slots": ["cpu"]},
        "single": {"bind": "127.0.0.1:9103", "engine": "ctranslate2", "dtype": None,
                   "batch": 1, "slots": ["cpu"]},
        "reference": {"bind": "127.0.0.1:9104", "slots": ["cpu"]},
        "explicit": {"bind": "127.0.0.1:9105", "batch": 1, "slots": ["cpu"]}}))
    assert {name: pool.batch for name, pool in layout.pools.items()} == {
        "fast": 4, "wide": 16, "single": 1, "reference": 1, "explicit": 1}
    described = {line.split(":")[0].strip(): line for line in describe(layout).splitlines()
                 if line.startswith("  pool ")}
    assert described["pool fast"].endswith("1 workers [cpux1t], batches of up to 4")
    assert described["pool wide"].endswith(", batches of up to 16")
    # a pool that takes one request at a time reads as it did before batches
    assert all("batches" not in described[f"pool {name}"]
               for name in ("single", "reference", "explicit"))


def test_admission_and_access_settings(write_layout: LayoutFactory, tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("k1\n")
    layout = load_layout(write_layout(front={
        "threads": 8, "max_queued_samples": 0, "api_keys_file": "keys",
        "cors_origins": ["https://editor.example", "http://localhost:3000"]}))
    front = layout.front
    assert (front.max_inflight, front.max_queued_samples) == (7, 0)  # below the threads
    assert front.cors_origins == ("https://editor.example", "http://localhost:3000")
    assert front.api_keys_file == (tmp_path / "keys").resolve()
    default = load_layout(write_layout()).front
    assert (default.max_inflight, default.cors_origins, default.api_keys_file) == (12, (), None)


def test_unreadable_and_invalid_files_are_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="cannot be read"):
        load_layout(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("pools: [unclosed")
    with pytest.raises(LayoutError, match="not valid YAML"):
        load_layout(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(LayoutError, match="<root>: must be a mapping"):
        load_layout(tmp_path / "list.yaml")


def test_the_shipped_layouts_are_valid(tmp_path: Path, tiny_model_dir: Path) -> None:
    default = load_layout(DEFAULT_LAYOUT)
    assert {name: pool.model.path for name, pool in default.pools.items()} == SHIPPED_MODELS
    assert default.default_pool.name == "small" and str(default.front.bind) == "127.0.0.1:8000"
    # One single-threaded worker per core of the 2-core machine it is tuned on.
    assert all([(s.device, s.threads) for s in pool.slots] == [("cpu", 1)] * 2
               for pool in default.pools.values())
    # The 4-GPU example, with stand-in folders where its GPT-2 checkpoints would be.
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "gpu_layout.4xgpu.yaml", tmp_path / "examples")
    for name in ("gpt2", "gpt2-medium"):
        shutil.copytree(tiny_model_dir, tmp_path / "models" / name)
    example = load_layout(tmp_path / "examples" / "gpu_layout.4xgpu.yaml")
    assert list(example.pools) == ["small", "medium"]
    assert example.pool_named("gpt2/medium") is example.pools["medium"]
    devices = {s.device for p in example.pools.values() for s in p.slots}
    assert devices == {"cuda:0", "cuda:1", "cuda:2", "cuda:3"}



def test_pool_hosts_may_be_names_and_default_to_the_bind(tmp_path: Path,
                                                         tiny_model_dir: Path) -> None:
    hosts = ["10.0.0.2:8101", "gpu-box-2.internal:8101", "[fd00::3]:8101", "localhost:8101"]
    path = tmp_path / "layout.yaml"
    path.write_text(yaml.safe_dump(mutate(tiny_model_dir, {
        "pools.small.hosts": hosts, "pools.small.bind": "0.0.0.0:8101"})))
    assert load_layout(path).pools["small"].urls == (
        "http://10.0.0.2:8101", "http://gpu-box-2.internal:8101", "http://[fd00::3]:8101",
        "http://localhost:8101")
    path.write_text(yaml.safe_dump(mutate(tiny_model_dir, {})))
    plain = load_layout(path).pools["small"]
    assert plain.hosts == () and plain.urls == ("http://127.0.0.1:8101",)
