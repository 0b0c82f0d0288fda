"""Read ``gpu_layout.yaml`` once, validate it, and hand out frozen, typed objects.

This module must stay free of torch and requests: the gunicorn masters, the front and
the launcher all import it, and none of them may initialise CUDA.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

DEFAULT_LAYOUT = Path(__file__).resolve().parent.parent / "gpu_layout.yaml"
LAYOUT_ENV = "FANOUT_LAYOUT"
FRONT_BIND_ENV = "FANOUT_FRONT_BIND"
POOL_ENV = "FANOUT_POOL"  # which pool a worker-tier server runs
API_KEYS_ENV = "FANOUT_API_KEYS"  # the front's API keys, comma-separated (frontend_api.access)

DTYPES = ("auto", "float32", "float16", "bfloat16")
# What generates inside a pool's workers (worker_api.engines): CTranslate2, a decode engine,
# or transformers' generate(), the reference that runs any model transformers loads.
ENGINES = ("ctranslate2", "transformers")
DEFAULT_ENGINE = "transformers"
# CTranslate2's compute types: these run on CPU and CUDA; the GPU_ONLY ones need CUDA.
QUANTIZATIONS = ("int8", "int8_float32", "float32")
GPU_ONLY_QUANTIZATIONS = ("float16", "bfloat16", "int8_float16")
# Requests a CTranslate2 worker takes at once when they wait (pools.NAME.batch).
DEFAULT_BATCH = 4
MAX_BATCH = 64
_DEVICE = re.compile(r"^(cpu|cuda:(0|[1-9][0-9]*))$")
_POOL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# Another name for a pool (Write With Transformer's "gpt2/medium"): '/'-separated parts of
# letters, digits, '.', '_' and '-', so it is also a URL path (POST /autocomplete/<alias>).
_ALIAS = re.compile(r"^(?=.{1,64}$)[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)*$")
# A hub id is "name" or "owner/name"; anything that looks like a path is a folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_PATH_PREFIXES = ("/", "./", "../", "~")
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")
# A DNS name as RFC 1123 allows it: dot-separated labels of letters, digits and '-'.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class LayoutError(ValueError):
    """A layout file that cannot be served; the message names file, key path and problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source, self.key, self.problem = source, key, problem


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        # A wildcard bind is reached through loopback on this host.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class GenerationDefaults:
    """What a request gets for each parameter it leaves out."""

    length: int = 20
    temperature: float = 1.0
    top_k: int = 40
    top_p: float = 0.9
    max_time: float = 3.0
    n_samples: int = 3
    # Where /autocomplete's suggestions end unless a request says (fanout.protocol.STOP_AT);
    # /v1/completions keeps OpenAI's "none" (max_tokens a hard cap, the text unaltered).
    stop_at: str = "word"


@dataclass(frozen=True)
class GenerationLimits:
    """The largest values a request may ask for."""

    length: int = 256
    max_time: float = 20.0
    context_bytes: int = 32_768


@dataclass(frozen=True)
class Front:
    bind: Bind = Bind("127.0.0.1", 8000)
    threads: int = 16
    max_samples: int = 8
    # Seconds allowed for connecting to and hearing back from a worker beyond max_time.
    network_slack: float = 5.0
    max_body_bytes: int = 65_536
    # Admission bounds: past either one the front answers 503 + Retry-After at once
    # instead of queueing. Requests in flight stay below threads so that threads remain
    # free to say 503 and to answer /health under overload.
    max_inflight: int = 12
    max_queued_samples: int = 24  # per pool: samples waiting for a busy worker
    # Browser origins allowed to call the API from other sites (CORS); none by default.
    cors_origins: tuple[str, ...] = ()
    # One API key per line; with keys configured (here or $FANOUT_API_KEYS) every API
    # request needs "Authorization: Bearer <key>".
    api_keys_file: Path | None = None
    # How often a pool's hosts that are out of service are asked whether they are back.
    host_check_seconds: float = 2.0


@dataclass(frozen=True)
class Edge:
    """The buffering reverse proxy (nginx) that listens on ``front.bind`` for the front.

    The front is one gunicorn process whose threads each hold a connection until its
    request is read: a few slow or silent clients would hold them all. The edge reads
    every request whole, within its timeouts, before the front sees it, and holds idle
    and slow connections at the cost of a little memory each (``fanout edge``).
    """

    enabled: bool = True
    # Where the front listens behind the edge (default: loopback, the public port + 1).
    front_bind: Bind = Bind("127.0.0.1", 8001)
    header_timeout: float = 10.0  # seconds for a client to send its request headers
    body_timeout: float = 10.0  # seconds between two reads of a request body
    send_timeout: float = 30.0  # seconds between two writes a client does not take
    keepalive_timeout: float = 15.0  # an idle client connection is closed after this
    # Per client address: requests served at once, and a request rate with a burst.
    connections_per_client: int = 64
    requests_per_second: float = 50.0
    burst: int = 100
    processes: int = 1  # nginx worker processes (each holds thousands of connections)


@dataclass(frozen=True)
class Slot:
    index: int
    device: str
    threads: int = 1
    cpus: tuple[int, ...] = ()  # CPU cores the worker is pinned to; () = not pinned

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda:")

    @property
    def cuda_index(self) -> int | None:
        return int(self.device.split(":", 1)[1]) if self.is_cuda else None


@dataclass(frozen=True)
class Model:
    """A local folder (``path`` set) or a hub id resolved from the local cache."""

    source: str
    path: Path | None
    allow_pickle: bool = False

    @property
    def name(self) -> str:
        return self.path.name if self.path else self.source


@dataclass(frozen=True)
class Pool:
    name: str
    model: Model
    dtype: str
    bind: Bind
    slots: tuple[Slot, ...]
    # gunicorn's worker timeout; must exceed the longest generation a request may ask for.
    worker_timeout: float = 60.0
    # Where the front reaches this pool's worker tier: base URLs of one server per host
    # running it (pools.NAME.hosts); when the layout names none, the pool's own bind.
    hosts: tuple[str, ...] = ()
    engine: str = DEFAULT_ENGINE
    # CTranslate2's compute type (engine ctranslate2 only; None for transformers).
    quantization: str | None = None
    # Other names requests may use for this pool (model_size, model, /autocomplete/<alias>).
    aliases: tuple[str, ...] = ()
    # Requests a worker takes at once when they are already waiting, and decodes as one
    # batch (worker_api.gathering); 1 for transformers, which decodes one at a time.
    batch: int = 1

    @property
    def precision(self) -> str:
        """What the weights compute in: the quantization, or the transformers dtype."""
        return self.quantization or self.dtype

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(slot.device for slot in self.slots)

    @property
    def urls(self) -> tuple[str, ...]:
        return self.hosts or (self.bind.url,)

    @property
    def total_workers(self) -> int:
        """Every host's workers: each host runs one worker per slot."""
        return len(self.slots) * len(self.urls)


@dataclass(frozen=True)
class Layout:
    source: Path
    front: Front
    defaults: GenerationDefaults
    limits: GenerationLimits
    pools: Mapping[str, Pool]
    edge: Edge = Edge(enabled=False)

    @property
    def front_listen(self) -> Bind:
        """Where the front's own server binds: behind the edge, or public without one."""
        return self.edge.front_bind if self.edge.enabled else self.front.bind

    @property
    def default_pool(self) -> Pool:
        return next(iter(self.pools.values()))

    def pool(self, name: str) -> Pool:
        return self.pools[name]

    @cached_property
    def names(self) -> Mapping[str, Pool]:
        """Every name a request may give a pool: the pools' own in layout order, then
        their aliases. The one place an alias is resolved (:func:`pool_name`)."""
        named: dict[str, Pool] = dict(self.pools)
        for pool in self.pools.values():
            named.update(dict.fromkeys(pool.aliases, pool))
        return MappingProxyType(named)

    def pool_named(self, name: str) -> Pool | None:
        """The pool a name or an alias means, or None."""
        return self.names.get(name)


def pool_name(names: Mapping[str, object], name: str) -> str:
    """The pool's own name for ``name``, when ``names`` (:attr:`Layout.names`) maps it to
    a pool by an alias; any other name as it is, for the caller to look up and refuse."""
    pool = names.get(name)
    return pool.name if isinstance(pool, Pool) else name


def layout_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The layout to use: an explicit path, else ``$FANOUT_LAYOUT``, else the embedded default."""
    chosen = explicit or os.environ.get(LAYOUT_ENV) or DEFAULT_LAYOUT
    return Path(chosen).expanduser().resolve()


def load_layout(path: str | os.PathLike[str] | None = None) -> Layout:
    """Parse and validate a layout file. Raises :class:`LayoutError` on the first problem."""
    source = layout_path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise LayoutError(str(source), "<file>", f"cannot be read ({exc.strerror})") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LayoutError(str(source), "<file>", f"is not valid YAML: {exc}") from exc
    return _Parser(source).layout(document)


def load_layout_or_exit(path: str | os.PathLike[str] | None = None) -> Layout:
    """For the command-line tools: the layout, or exit status 2 with its error on stderr."""
    try:
        return load_layout(path)
    except LayoutError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


class _Parser:
    """Walks the YAML document, remembering the key path for error messages."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.binds: dict[Bind, str] = {}

    def fail(self, key: str, problem: str) -> LayoutError:
        return LayoutError(str(self.source), key, problem)

    def layout(self, document: Any) -> Layout:
        root = self.mapping(document, "<root>", required={"pools"},
                            optional={"front", "generation", "edge"})
        generation = self.mapping(root.get("generation", {}), "generation",
                                  optional={"defaults", "limits"})
        limits = self.limits(generation.get("limits", {}))
        front = self.front(root.get("front", {}))
        edge = self.edge(root.get("edge", {}), front)
        defaults = self.defaults(generation.get("defaults", {}), limits, front)
        pools = self.mapping(root["pools"], "pools")
        if not pools:
            raise self.fail("pools", "needs at least one pool")
        parsed = {name: self.pool(name, spec, limits) for name, spec in pools.items()}
        self.check_aliases(parsed)
        return Layout(self.source, front, defaults, limits, parsed, edge)

    def front(self, value: Any) -> Front:
        key, base = "front", Front()
        spec = self.mapping(value, key, optional={
            "bind", "threads", "max_samples", "network_slack", "max_body_bytes",
            "max_inflight", "max_queued_samples", "cors_origins", "api_keys_file",
            "host_check_seconds"})
        bind_text = os.environ.get(FRONT_BIND_ENV) or spec.get("bind", str(base.bind))
        bind_key = f"${FRONT_BIND_ENV}" if os.environ.get(FRONT_BIND_ENV) else f"{key}.bind"
        threads = self.integer(spec, key, "threads", base.threads, low=2, high=1024)
        return Front(
            bind=self.bind(bind_text, bind_key),
            threads=threads,
            max_samples=self.integer(spec, key, "max_samples", base.max_samples, low=1, high=64),
            network_slack=self.number(spec, key, "network_slack", base.network_slack,
                                      low=0.1, high=600),
            max_body_bytes=self.integer(spec, key, "max_body_bytes", base.max_body_bytes,
                                        low=1024, high=64 * 2**20),
            max_inflight=self.integer(spec, key, "max_inflight",
                                      min(base.max_inflight, threads - 1), low=1,
                                      high=threads - 1, why="must stay below front.threads"),
            max_queued_samples=self.integer(spec, key, "max_queued_samples",
                                            base.max_queued_samples, low=0, high=1_000_000),
            cors_origins=self.origins(spec.get("cors_origins", []), f"{key}.cors_origins"),
            api_keys_file=self.file(spec.get("api_keys_file"), f"{key}.api_keys_file"),
            host_check_seconds=self.number(spec, key, "host_check_seconds",
                                           base.host_check_seconds, low=0.1, high=3600),
        )

    def edge(self, value: Any, front: Front) -> Edge:
        key, base = "edge", Edge()
        spec = self.mapping(value, key, optional={
            "enabled", "front_bind", "header_timeout", "body_timeout", "send_timeout",
            "keepalive_timeout", "connections_per_client", "requests_per_second", "burst",
            "processes"})
        enabled = spec.get("enabled", True)
        if not isinstance(enabled, bool):
            raise self.fail(f"{key}.enabled", "must be true or false")
        public = front.bind.port
        default_bind = f"127.0.0.1:{public + 1 if public < 65535 else public - 1}"
        front_bind = self.bind(spec.get("front_bind", default_bind), f"{key}.front_bind") \
            if enabled else base.front_bind
        seconds = {name: self.number(spec, key, name, getattr(base, name), low=0.1, high=3600)
                   for name in ("header_timeout", "body_timeout", "send_timeout",
                                "keepalive_timeout")}
        return Edge(
            enabled=enabled, front_bind=front_bind, **seconds,
            connections_per_client=self.integer(spec, key, "connections_per_client",
                                                base.connections_per_client, low=1,
                                                high=1_000_000),
            requests_per_second=self.number(spec, key, "requests_per_second",
                                            base.requests_per_second, low=0.001,
                                            high=1_000_000),
            burst=self.integer(spec, key, "burst", base.burst, low=0, high=1_000_000),
            processes=self.integer(spec, key, "processes", base.processes, low=1, high=256),
        )

    def origins(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, "must be a list of origins, e.g. ['https://editor.example']")
        for index, origin in enumerate(value):
            if origin != "*" and not (isinstance(origin, str) and _ORIGIN.match(origin)):
                raise self.fail(f"{key}[{index}]", f"{origin!r} is not an origin: "
                                "scheme://host[:port] with no path, or '*'")
        return tuple(value)

    def file(self, value: Any, key: str) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a file path")
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.source.parent / path
        if not path.is_file():
            raise self.fail(key, f"{path} is not a readable file")
        return path.resolve()

    def limits(self, value: Any) -> GenerationLimits:
        key, base = "generation.limits", GenerationLimits()
        spec = self.mapping(value, key, optional={"length", "max_time", "context_bytes"})
        return GenerationLimits(
            length=self.integer(spec, key, "length", base.length, low=1, high=1_000_000),
            max_time=self.number(spec, key, "max_time", base.max_time, low=0.01, high=3600),
            context_bytes=self.integer(spec, key, "context_bytes", base.context_bytes,
                                       low=1, high=16 * 2**20),
        )

    def defaults(self, value: Any, limits: GenerationLimits, front: Front) -> GenerationDefaults:
        key, base = "generation.defaults", GenerationDefaults()
        spec = self.mapping(value, key, optional={
            "length", "temperature", "top_k", "top_p", "max_time", "n_samples", "stop_at"})
        return GenerationDefaults(
            length=self.integer(spec, key, "length", base.length, low=1, high=limits.length),
            temperature=self.number(spec, key, "temperature", base.temperature,
                                    low=0.0, high=100.0),
            top_k=self.integer(spec, key, "top_k", base.top_k, low=0, high=1_000_000),
            top_p=self.number(spec, key, "top_p", base.top_p, low=0.0, high=1.0, low_open=True),
            max_time=self.number(spec, key, "max_time", base.max_time,
                                 low=0.01, high=limits.max_time),
            n_samples=self.integer(spec, key, "n_samples", base.n_samples,
                                   low=1, high=front.max_samples),
            stop_at=self.stop_at(spec.get("stop_at", base.stop_at), f"{key}.stop_at"),
        )

    def stop_at(self, value: Any, key: str) -> str:
        from fanout.protocol import STOP_AT  # here: `fanout --help` loads the layout alone

        if value not in STOP_AT:
            raise self.fail(key, f"{value!r} is not one of {', '.join(STOP_AT)}")
        return str(value)

    def pool(self, name: Any, value: Any, limits: GenerationLimits) -> Pool:
        key = f"pools.{name}"
        if not isinstance(name, str) or not _POOL_NAME.match(name):
            raise self.fail(key, "pool names are lower-case letters, digits, '-' or '_' "
                                 "(at most 32, starting with a letter)")
        spec = self.mapping(value, key, required={"model", "bind", "slots"},
                            optional={"dtype", "allow_pickle", "worker_timeout", "hosts",
                                      "engine", "quantization", "aliases", "batch"})
        slots_value = spec["slots"]
        if not isinstance(slots_value, list) or not slots_value:
            raise self.fail(f"{key}.slots", "needs a list of at least one worker slot")
        slots = tuple(self.slot(f"{key}.slots[{i}]", i, s) for i, s in enumerate(slots_value))
        engine = spec.get("engine", DEFAULT_ENGINE)
        if engine not in ENGINES:
            raise self.fail(f"{key}.engine", f"{engine!r} is not one of {', '.join(ENGINES)}")
        dtype, quantization = self.precision(spec, key, engine, slots)
        allow_pickle = spec.get("allow_pickle", False)
        if not isinstance(allow_pickle, bool):
            raise self.fail(f"{key}.allow_pickle", "must be true or false")
        timeout = self.number(spec, key, "worker_timeout", Pool.worker_timeout,
                              low=1.0, high=86_400)
        batch = self.batch(spec, key, engine)
        if timeout <= limits.max_time:
            raise self.fail(f"{key}.worker_timeout",
                            f"{timeout:g}s must exceed generation.limits.max_time "
                            f"({limits.max_time:g}s), or gunicorn kills healthy generations")
        return Pool(name=name, model=self.model(spec["model"], f"{key}.model", allow_pickle),
                    dtype=dtype, bind=self.bind(spec["bind"], f"{key}.bind"),
                    slots=slots, worker_timeout=timeout,
                    hosts=self.hosts(spec.get("hosts"), f"{key}.hosts"),
                    engine=engine, quantization=quantization,
                    aliases=self.aliases(spec.get("aliases"), f"{key}.aliases"), batch=batch)

    def batch(self, spec: dict[str, Any], key: str, engine: str) -> int:
        """How many waiting requests a worker may take at once: CTranslate2 decodes them
        as one batch (default ``DEFAULT_BATCH``); transformers decodes one at a time."""
        if engine == "ctranslate2":
            return self.integer(spec, key, "batch", DEFAULT_BATCH, low=1, high=MAX_BATCH)
        if self.integer(spec, key, "batch", 1, low=1, high=MAX_BATCH) != 1:
            raise self.fail(f"{key}.batch", "applies to the ctranslate2 engine; the "
                                            "transformers engine decodes one request at "
                                            "a time")
        return 1

    def aliases(self, value: Any, key: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, "must be a list of names, e.g. ['gpt2/medium']")
        for index, alias in enumerate(value):
            if not isinstance(alias, str) or not _ALIAS.match(alias):
                raise self.fail(f"{key}[{index}]", f"{alias!r} is not an alias: at most 64 "
                                "characters, '/'-separated parts of letters, digits, '.', "
                                "'_' or '-', each starting with a letter or digit")
            if alias in value[:index]:
                raise self.fail(f"{key}[{index}]", f"{alias!r} is listed twice")
        return tuple(value)

    def check_aliases(self, pools: Mapping[str, Pool]) -> None:
        """A name means one pool: no alias is a pool's name or another pool's alias."""
        owner: dict[str, str] = {}
        for pool in pools.values():
            for index, alias in enumerate(pool.aliases):
                key = f"pools.{pool.name}.aliases[{index}]"
                if alias in pools:
                    raise self.fail(key, f"{alias!r} is the name of pool {alias}")
                if alias in owner:
                    raise self.fail(key, f"{alias!r} is already an alias of pool "
                                         f"{owner[alias]}")
                owner[alias] = pool.name

    def precision(self, spec: dict[str, Any], key: str, engine: str,
                  slots: tuple[Slot, ...]) -> tuple[str, str | None]:
        """``dtype`` for transformers, ``quantization`` for CTranslate2; each names its
        engine when given to the other, so a layout never carries a setting that is ignored."""
        all_cuda = all(slot.is_cuda for slot in slots)
        if engine == "ctranslate2":
            if spec.get("dtype") is not None:
                raise self.fail(f"{key}.dtype", "applies to the transformers engine; a "
                                                "ctranslate2 pool sets quantization")
            # int8 weights with float16 activations is CTranslate2's fast GPU choice.
            quantization = spec.get("quantization") or ("int8_float16" if all_cuda else "int8")
            if quantization not in QUANTIZATIONS + GPU_ONLY_QUANTIZATIONS:
                raise self.fail(f"{key}.quantization", f"{quantization!r} is not one of "
                                f"{', '.join(QUANTIZATIONS + GPU_ONLY_QUANTIZATIONS)}")
            if quantization in GPU_ONLY_QUANTIZATIONS and not all_cuda:
                raise self.fail(f"{key}.quantization",
                                f"{quantization} needs GPU slots; a pool with cpu slots "
                                f"uses one of {', '.join(QUANTIZATIONS)}")
            return "auto", quantization
        if spec.get("quantization") is not None:
            raise self.fail(f"{key}.quantization", "applies to the ctranslate2 engine; a "
                                                   "transformers pool sets dtype")
        dtype = spec.get("dtype") or "auto"
        if dtype not in DTYPES:
            raise self.fail(f"{key}.dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
        if dtype == "float16" and not all_cuda:
            raise self.fail(f"{key}.dtype", "float16 needs GPU slots; use float32 or "
                                            "bfloat16 for a pool with cpu slots")
        return dtype, None

    def hosts(self, value: Any, key: str) -> tuple[str, ...]:
        """The pool's worker-tier servers as base URLs; unlike a bind, a host may be a DNS
        name (a Kubernetes Service, another machine) and may not be a wildcard."""
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            raise self.fail(key, "must be a list of at least one 'host:port', e.g. "
                                 "['10.0.0.2:8101', 'gpu-box-2:8101']")
        urls: list[str] = []
        for index, item in enumerate(value):
            item_key = f"{key}[{index}]"
            host, port = self.address(item, item_key, names=True)
            if host in ("0.0.0.0", "::"):
                raise self.fail(item_key, f"{host} is a wildcard bind address; name the "
                                          "address the front connects to")
            url = Bind(host, port).url
            if url in urls:
                raise self.fail(item_key, f"{item!r} is listed twice")
            urls.append(url)
        return tuple(urls)

    def slot(self, key: str, index: int, value: Any) -> Slot:
        if isinstance(value, str):
            value = {"device": value}
        spec = self.mapping(value, key, required={"device"}, optional={"threads", "cpus"})
        device = spec["device"]
        if not isinstance(device, str) or not _DEVICE.match(device):
            raise self.fail(f"{key}.device", f"{device!r} is not a device; use 'cpu' or 'cuda:N'")
        cpus = self.cpus(spec.get("cpus"), f"{key}.cpus")
        # Pinned to N cores, a worker's thread pool is N threads unless the slot says less.
        threads = self.integer(spec, key, "threads", len(cpus) or Slot.threads, low=1,
                               high=len(cpus) or 1024,
                               why="no more threads than the cores it is pinned to"
                               if cpus else "")
        return Slot(index=index, device=device, threads=threads, cpus=cpus)

    def cpus(self, value: Any, key: str) -> tuple[int, ...]:
        """Core numbers as the kernel counts them; whether this host has them is checked
        where the worker pins itself (the layout may be read on another machine)."""
        if value is None:
            return ()
        if (not isinstance(value, list) or not value
                or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in value)):
            raise self.fail(key, f"must be a list of CPU core numbers (0, 1, ...), not {value!r}")
        if len(set(value)) != len(value):
            raise self.fail(key, f"lists a core twice: {value}")
        return tuple(value)

    def model(self, value: Any, key: str, allow_pickle: bool) -> Model:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must name a model folder or a hub id")
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            candidate = self.source.parent / candidate
        if candidate.is_dir():
            return Model(source=value, path=candidate.resolve(), allow_pickle=allow_pickle)
        if value.startswith(_PATH_PREFIXES) or not _HUB_ID.match(value):
            raise self.fail(key, f"model folder {candidate} does not exist")
        return Model(source=value, path=None, allow_pickle=allow_pickle)

    def bind(self, value: Any, key: str) -> Bind:
        bind = Bind(*self.address(value, key, names=False))
        if bind in self.binds:
            raise self.fail(key, f"{bind} is already bound by {self.binds[bind]}")
        self.binds[bind] = key
        return bind

    def address(self, value: Any, key: str, names: bool) -> tuple[str, int]:
        """``host:port`` (``[v6]:port`` for IPv6); a DNS name as host only if ``names``."""
        if not isinstance(value, str):
            raise self.fail(key, "must be 'host:port', e.g. '127.0.0.1:8000'")
        host, sep, port_text = value.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise self.fail(key, f"{value!r} is not 'host:port' with a port from 1 to 65535")
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                if not (names and _HOSTNAME.match(host)):
                    expected = "an IP address or a host name" if names \
                        else "an IP address or 'localhost'"
                    raise self.fail(key, f"{host!r} is not {expected}") from None
        return host, int(port_text)

    def mapping(self, value: Any, key: str, required: AbstractSet[str] = frozenset(),
                optional: AbstractSet[str] | None = None) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, not {type(value).__name__}")
        missing = sorted(set(required) - set(value))
        if missing:
            raise self.fail(f"{key}.{missing[0]}", "is required")
        if optional is not None:
            unknown = sorted(str(k) for k in set(value) - set(required) - set(optional))
            if unknown:
                allowed = ", ".join(sorted(required | optional))
                raise self.fail(f"{key}.{unknown[0]}", f"unknown key (allowed: {allowed})")
        return value

    def integer(self, spec: dict[str, Any], key: str, name: str, default: int,
                low: int, high: int, why: str = "") -> int:
        value = spec.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{key}.{name}", f"must be an integer, not {value!r}")
        if not low <= value <= high:
            raise self.fail(f"{key}.{name}",
                            f"{value} is outside {low}..{high}" + (f" ({why})" if why else ""))
        return value

    def number(self, spec: dict[str, Any], key: str, name: str, default: float,
               low: float, high: float, low_open: bool = False) -> float:
        value = spec.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{key}.{name}", f"must be a number, not {value!r}")
        too_low = value <= low if low_open else value < low
        if too_low or value > high or value != value:
            bracket = "(" if low_open else "["
            raise self.fail(f"{key}.{name}", f"{value} is outside {bracket}{low:g}, {high:g}]")
        return float(value)


def describe(layout: Layout) -> str:
    """A few human lines: what a layout will start."""
    lines = [f"layout {layout.source}"]
    if layout.edge.enabled:
        lines.append(f"  edge    nginx on {layout.front.bind}, buffering for the front")
    lines.append(f"  front   http on {layout.front_listen} ({layout.front.threads} threads, "
                 f"up to {layout.front.max_samples} samples)")
    for pool in layout.pools.values():
        devices = ", ".join(f"{s.device}x{s.threads}t" + (f"@{s.cpus}" if s.cpus else "")
                            for s in pool.slots)
        lines.append(f"  pool {pool.name}: {pool.model.source} ({pool.engine} "
                     f"{pool.precision}) on {pool.bind}, "
                     f"{len(pool.slots)} workers [{devices}]"
                     + (f", batches of up to {pool.batch}" if pool.batch > 1 else ""))
        if pool.aliases:
            lines.append(f"    also named {', '.join(pool.aliases)}")
        if pool.hosts:
            lines.append(f"    the front reaches it on {len(pool.hosts)} hosts: "
                         + ", ".join(pool.hosts))
    return "\n".join(lines)


def run(args: argparse.Namespace, layout: Layout) -> int:
    """``fanout check [LAYOUT]``: the layout is valid (the command loaded it); say what it
    starts."""
    print(describe(layout))
    return 0
