"""The same work under every way of serving it: n completions of L new tokens, one model.

    fanout bench [--model DIR ...] [--engines transformers,ctranslate2]
        [--n 3] [--length 20] [--json F]

Each strategy runs with each worker engine (``--engines``): ``transformers`` (float32)
and ``ctranslate2`` (``--quantization``, int8 as shipped). Strategies, each measured in
this one run on this one machine, one request at a time:

- ``naive``: one model process generates the n samples one after another (all cores);
- ``multi-worker naive``: n model processes, but a request's n samples still run
  sequentially in one of them (more workers help throughput, never one request's latency);
- ``fan-out``: the two tiers as built: the front sends n HTTP requests to n sync workers;
- ``batched``: one model process generates the n samples in one batched call;
- ``floor``: n model processes each generate one sample, handed over through pipes with
  no HTTP at all: the best this hardware can do with this model code.

fan-out and floor use the same processes x threads; naive and batched get every core.
``batched`` is transformers' own batching and runs for that engine only.

Every sample is exactly L tokens (``min_tokens`` = L), so every row does the same work.
Transformers rows send the same seeds in every strategy, so they sample the same
sequences. CTranslate2 rows send none: a seeded CTranslate2 sample builds a fresh
generator (its decoding thread cannot be reseeded), which costs tens of ms that an
editor's Tab, unseeded, never pays.

Besides each row's ``x floor`` (against the same engine's floor), the report compares
fan-out on CTranslate2 with both floors and gives the resident memory of one worker
per engine (``comparisons``). The front's own overhead is measured separately against
a worker tier that answers at once (``fanout.tools.bench.instant_worker``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from fanout.launch.serve import Supervisor, running_tiers
from fanout.launch.tiers import tiers
from fanout.layout import QUANTIZATIONS, Layout, load_layout
from fanout.protocol import GenerationParams
from fanout.tools.bench.inprocess import (
    TRANSFORMERS,
    EngineChoice,
    Job,
    ModelProcess,
    close_all,
    convert_once,
    sample_params,
    start_processes,
)
from fanout.tools.capacity import CONTEXT
from fanout.tools.load import percentile as load_percentile
from fanout.tools.ports import free_port

REPO = Path(__file__).resolve().parents[3]
GPT2_SMALL_SIZED = REPO / ".cache" / "models" / "gpt2-124m-random"
DEFAULT_MODELS = (REPO / "models" / "small", REPO / "models" / "medium", GPT2_SMALL_SIZED)
START_SECONDS = 300.0
ENGINES = ("transformers", "ctranslate2")  # the reference first: ratios are against it
# The targets the comparisons are read against (issue 16), for the default Tab.
TARGET_SPEEDUP = 10.0  # fan-out on CTranslate2 vs the in-process transformers floor
TARGET_X_FLOOR = 1.5  # fan-out on CTranslate2 vs the in-process CTranslate2 floor
TARGET_WORKER_MIB = 120.0  # one CTranslate2 worker's resident memory


@dataclass(frozen=True)
class Workload:
    n: int
    length: int
    requests: int
    warmup: int
    threads_per_sample: int  # fan-out and floor: each of the n processes
    cores: int  # naive and batched: their one process
    seeded: bool = True  # False for CTranslate2 (see the module docstring)
    workers: int = 0  # fan-out's worker processes; 0: n, one per sample

    @property
    def fanout_workers(self) -> int:
        return self.workers or self.n

    def params(self, request: int) -> GenerationParams:
        """Request r's parameters; seeded, sample i uses seed 1000 r + i in every strategy.
        min_tokens = length: no sample ends early on end-of-text, so every one is L tokens."""
        return GenerationParams(context=CONTEXT, length=self.length, temperature=1.0,
                                top_k=40, top_p=0.9, max_time=120.0, min_tokens=self.length,
                                seed=1000 * request if self.seeded else None)

    def on(self, engine: EngineChoice) -> Workload:
        return replace(self, seeded=engine.name != "ctranslate2")


@dataclass
class Result:
    strategy: str
    model: str
    engine: str
    processes: int
    threads: int
    seconds: list[float] = field(default_factory=list)
    tokens: int = 0
    memory_bytes: int = 0  # every model process together
    process_rss: list[int] = field(default_factory=list)  # each model process (a worker)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p95(self) -> float:
        return percentile(self.seconds, 95)

    def summary(self, floor: float | None) -> dict[str, Any]:
        return {"strategy": self.strategy, "model": self.model, "engine": self.engine,
                "processes": self.processes, "threads": self.threads,
                "requests": len(self.seconds),
                "median_s": round(self.median, 4), "p95_s": round(self.p95, 4),
                "x_floor": round(self.median / floor, 3) if floor else None,
                "tokens": self.tokens, "memory_mib": round(self.memory_bytes / 2**20, 1),
                # the largest process: what one worker of this engine holds
                "worker_rss_mib": round(max(self.process_rss, default=0) / 2**20, 1)}


def percentile(values: list[float], percent: float) -> float:
    """As the load reports compute it; never empty here (every strategy times requests)."""
    found = load_percentile(values, percent)
    assert found is not None, "no timings"
    return found


def measure(work: Workload, one_request: Callable[[GenerationParams], int]) -> tuple[
        list[float], int]:
    """Time ``one_request`` (which returns the tokens it generated) over the workload."""
    for request in range(work.warmup):  # seeds of their own, after the timed ones
        one_request(work.params(work.requests + request))
    seconds, tokens = [], 0
    for request in range(work.requests):
        started = time.perf_counter()
        tokens += one_request(work.params(request))
        seconds.append(time.perf_counter() - started)
    return seconds, tokens


# --- strategies without HTTP -------------------------------------------------------------

def run_inprocess(strategy: str, folder: Path, work: Workload,
                  engine: EngineChoice = TRANSFORMERS) -> Result:
    plans = {  # strategy -> (processes, threads, job kind, samples per job)
        "naive": (1, work.cores, "sequential", work.n),
        "multi-worker naive": (work.n, work.threads_per_sample, "sequential", work.n),
        "batched": (1, work.cores, "batched", work.n),
        "floor": (work.n, work.threads_per_sample, "sequential", 1),
    }
    count, threads, kind, per_job = plans[strategy]
    processes = start_processes(folder, count, threads, engine)
    turn = iter(range(1 << 30))
    try:
        def one_request(params: GenerationParams) -> int:
            if strategy == "floor":  # n processes, one sample each, all at once
                jobs = [Job(kind, sample_params(params, i), 1) for i in range(work.n)]
                return _all_at_once(processes, jobs)
            process = processes[next(turn) % count]  # round robin: always an idle one
            return sum(process.run(Job(kind, params, per_job)).tokens)

        seconds, tokens = measure(work, one_request)
        rss = [p.rss_bytes for p in processes]
    finally:
        close_all(processes)
    return Result(strategy, folder.name, engine.name, count, threads, seconds, tokens,
                  sum(rss), rss)


def _all_at_once(processes: list[ModelProcess], jobs: list[Job]) -> int:
    sent = [(process, process.send(job)) for process, job in zip(processes, jobs, strict=True)]
    return sum(sum(process.receive(started).tokens) for process, started in sent)


# --- strategies over HTTP ----------------------------------------------------------------

def bench_layout(folder: Path | None, work: Workload, directory: Path,
                 engine: EngineChoice = TRANSFORMERS) -> Layout:
    """One pool of n single-purpose slots on ``engine`` and a front, on free loopback
    ports. A CTranslate2 pool's master converts the model, or finds it cached."""
    precision = ({"engine": "ctranslate2", "quantization": engine.quantization}
                 if engine.name == "ctranslate2" else {"dtype": "float32"})
    pool = {"model": str(folder or REPO / "models" / "small"), **precision,
            "bind": f"127.0.0.1:{free_port()}", "worker_timeout": 300,
            "slots": [{"device": "cpu", "threads": work.threads_per_sample}]
            * work.fanout_workers}
    # No edge: these figures are the fan-out's own, and its documented baseline predates
    # the edge (one more loopback hop through nginx, for every strategy through the front).
    document = {"front": {"bind": f"127.0.0.1:{free_port()}", "threads": 8,
                          "max_samples": max(8, work.n)},
                "edge": {"enabled": False},
                "generation": {"limits": {"length": max(256, work.length),
                                          "max_time": 150.0}},
                "pools": {"bench": pool}}
    path = directory / "gpu_layout.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_layout(path)


@contextmanager
def running(layout: Layout, worker_app: str | None = None) -> Iterator[Supervisor]:
    """The layout's tiers, logging to ``tiers.log`` beside it; ``worker_app`` swaps the
    pool's app for a stand-in."""
    tier_list = tiers(layout)
    if worker_app is not None:
        tier_list = [replace(tier, argv=(*tier.argv[:-1], worker_app))
                     if tier.name.startswith("pool-") else tier for tier in tier_list]
    with running_tiers(layout, layout.source.parent / "tiers.log", START_SECONDS,
                       tier_list) as supervisor:
        yield supervisor


def client_session() -> requests.Session:
    """The benchmark's own HTTP client, kept lean so that its cost is not the front's:
    no proxy or .netrc look-ups from the environment on every request."""
    session = requests.Session()
    session.trust_env = False
    return session


def autocomplete(session: requests.Session, url: str, params: GenerationParams,
                 n: int) -> dict[str, Any]:
    # stop_at sent even at "none" (to_json leaves it out, and /autocomplete's default is
    # "word"): every strategy does the same L tokens.
    response = session.post(f"{url}/autocomplete", timeout=300,
                            json={**params.to_json(), "stop_at": params.stop_at,
                                  "n_samples": n})
    if response.status_code != 200:
        raise RuntimeError(f"the front answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body


def run_fanout(folder: Path, work: Workload, engine: EngineChoice = TRANSFORMERS) -> Result:
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as directory:
        layout = bench_layout(folder, work, Path(directory), engine)
        with running(layout) as supervisor, client_session() as session:
            url = layout.front.bind.url

            def one_request(params: GenerationParams) -> int:
                body = autocomplete(session, url, params, work.n)
                return sum(int(s["tokens"]) for s in body["sentences"])

            seconds, tokens = measure(work, one_request)
            pool_master = supervisor.running["pool-bench"][1].pid
            rss = [w.memory_info().rss for w in psutil.Process(pool_master).children()]
    return Result("fan-out", folder.name, engine.name, work.fanout_workers,
                  work.threads_per_sample,
                  seconds, tokens, sum(rss), rss)


def front_overhead(work: Workload, requests_count: int) -> dict[str, Any]:
    """The front's cost: a fan-out of n against workers that answer at once."""
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as directory:
        layout = bench_layout(None, work, Path(directory))
        with running(layout, "fanout.tools.bench.instant_worker:get_app()"), \
                client_session() as session:
            front = replace(work, requests=requests_count, warmup=20)
            inside: list[float] = []  # the front's own clock: body read to answer built

            def through(params: GenerationParams) -> int:
                body = autocomplete(session, layout.front.bind.url, params, work.n)
                inside.append(body["time"])
                return len(body["sentences"])
            through_front, _ = measure(front, through)
            inside = inside[-requests_count:]  # the timed ones, not the warm-up
            worker_url = f"{layout.pools['bench'].bind.url}/generate"
            direct, _ = measure(front, lambda p: session.post(
                worker_url, json=p.to_json(), timeout=10).status_code)
    return {"n": work.n, "requests": requests_count,
            "front_p50_ms": round(statistics.median(through_front) * 1e3, 2),
            "front_p95_ms": round(percentile(through_front, 95) * 1e3, 2),
            "front_inside_p50_ms": round(statistics.median(inside) * 1e3, 2),
            "one_worker_hop_p50_ms": round(statistics.median(direct) * 1e3, 2)}


# --- the run ------------------------------------------------------------------------------

STRATEGIES = ("floor", "fan-out", "naive", "multi-worker naive", "batched")
TRANSFORMERS_ONLY = ("batched",)


def engine_choice(name: str, folder: Path, quantization: str) -> EngineChoice:
    if name == "transformers":
        return TRANSFORMERS
    return EngineChoice(name, quantization, convert_once(folder, quantization))


def bench_model(folder: Path, work: Workload, strategies: tuple[str, ...],
                engines: tuple[str, ...], quantization: str,
                progress: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for name in engines:
        progress(f"{folder.name}: {name}")
        engine = engine_choice(name, folder, quantization)
        on_engine, results = work.on(engine), []
        for strategy in strategies:
            if name != "transformers" and strategy in TRANSFORMERS_ONLY:
                continue
            progress(f"{folder.name}: {name}: {strategy}")
            results.append(run_fanout(folder, on_engine, engine) if strategy == "fan-out"
                           else run_inprocess(strategy, folder, on_engine, engine))
        floor = next((r.median for r in results if r.strategy == "floor"), None)
        rows += [r.summary(floor) for r in results]
    return rows


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, fan-out on CTranslate2 against both in-process floors of this run, and
    one worker's resident memory per engine; None where a row was not measured."""
    found = {(r["model"], r["engine"], r["strategy"]): r for r in rows}
    compared = []
    for model in dict.fromkeys(r["model"] for r in rows):
        fast = found.get((model, "ctranslate2", "fan-out"))
        floors = {e: found.get((model, e, "floor")) for e in ENGINES}

        def ratio(slow: dict[str, Any] | None, quick: dict[str, Any] | None) -> float | None:
            return round(slow["median_s"] / quick["median_s"], 2) if slow and quick else None

        rss = {e: r["worker_rss_mib"] for e in ENGINES
               if (r := found.get((model, e, "fan-out")) or floors[e])}
        compared.append({
            "model": model,
            "speedup_vs_transformers_floor": ratio(floors["transformers"], fast),
            "x_ctranslate2_floor": ratio(fast, floors["ctranslate2"]),
            "worker_rss_mib": rss})
    return compared


def ensure_gpt2_small_sized(folder: Path) -> Path:
    """GPT-2 small's shape (124M parameters), random weights: fair for timing."""
    from fanout.tools.tiny_model import ensure_tiny_model

    return ensure_tiny_model(folder, layers=12, width=768, heads=12, window=1024)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib":
            round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "torch": metadata.version("torch"), "transformers": metadata.version("transformers"),
            "ctranslate2": metadata.version("ctranslate2"), "load_average": load_average()}


def load_average() -> list[float]:
    """1, 5 and 15 minutes: on a few shared cores, anyone else's work shows in every figure."""
    return [round(x, 2) for x in os.getloadavg()]


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'model':<18} {'engine':<12} {'strategy':<19} {'procs x thr':>11} "
              f"{'median s':>9} {'p95 s':>8} {'x floor':>8} {'tokens':>7} {'memory MiB':>11} "
              f"{'MiB/proc':>9}")
    print(header)
    for r in rows:
        ratio = f"{r['x_floor']:.2f}" if r["x_floor"] is not None else "-"
        print(f"{r['model']:<18} {r['engine']:<12} {r['strategy']:<19} {r['processes']:>6} x "
              f"{r['threads']:<2} {r['median_s']:>9.3f} {r['p95_s']:>8.3f} {ratio:>8} "
              f"{r['tokens']:>7} {r['memory_mib']:>11.1f} {r['worker_rss_mib']:>9.1f}")


def against(value: float | None, target: float, at_least: bool) -> str:
    """A figure with its target and whether it meets it."""
    if value is None:
        return "not measured"
    met = value >= target if at_least else value <= target
    return (f"{value:g} ({'met' if met else 'NOT met'}: target "
            f"{'>=' if at_least else '<='} {target:g})")


def print_comparisons(compared: list[dict[str, Any]]) -> None:
    print("\nfan-out on ctranslate2 against this run's in-process floors (medians), and one "
          "worker's resident memory:")
    for c in compared:
        rss = c["worker_rss_mib"]
        print(f"  {c['model']}:\n"
              f"    speed-up over the transformers floor: "
              f"{against(c['speedup_vs_transformers_floor'], TARGET_SPEEDUP, True)}\n"
              f"    x the ctranslate2 floor: "
              f"{against(c['x_ctranslate2_floor'], TARGET_X_FLOOR, False)}\n"
              f"    worker RSS MiB: "
              + ", ".join(f"{engine} {mib:.1f}" for engine, mib in rss.items())
              + (f"; ctranslate2 {against(rss['ctranslate2'], TARGET_WORKER_MIB, False)}"
                 if "ctranslate2" in rss else ""))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, action="append",
                        help="model folder (repeatable; default: the shipped small and "
                             "medium, and a random GPT-2-small-sized model)")
    parser.add_argument("--n", type=int, default=3, help="completions per request")
    parser.add_argument("--length", type=int, default=20, help="new tokens per completion")
    parser.add_argument("--requests", type=int, default=10, help="timed requests per strategy")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests first")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated subset of: {', '.join(STRATEGIES)} "
                             f"({', '.join(TRANSFORMERS_ONLY)}: transformers only)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated worker engines to run each strategy on: "
                             f"{', '.join(ENGINES)}")
    parser.add_argument("--quantization", default="int8", choices=QUANTIZATIONS,
                        help="the ctranslate2 engine's compute type (default int8, as shipped)")
    parser.add_argument("--overhead-requests", type=int, default=300,
                        help="requests timed against the instant worker tier (0: skip)")
    parser.add_argument("--workers", type=int, default=0,
                        help="fan-out's workers (default: --n, one per sample; fewer "
                             "than n queue the rest, as a pool with fewer slots does)")
    parser.add_argument("--json", type=Path, help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    """``fanout bench``: every strategy on every engine and model; the tables (and --json)."""
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise argparse.ArgumentError(None, f"unknown strategies {sorted(unknown)}; choose from "
                                           f"{STRATEGIES}")
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    if not engines or set(engines) - set(ENGINES):
        raise argparse.ArgumentError(None, f"--engines takes a comma-separated subset of "
                                           f"{', '.join(ENGINES)}")
    cores = os.cpu_count() or 1
    work = Workload(n=args.n, length=args.length, requests=args.requests,
                    warmup=args.warmup, threads_per_sample=max(1, cores // args.n),
                    cores=cores, workers=args.workers)
    # Absolute: a layout reads a bare relative path ("models/small") as a hub id.
    models = [m.resolve() for m in args.model] if args.model else [
        m for m in DEFAULT_MODELS if m != GPT2_SMALL_SIZED] + [
        ensure_gpt2_small_sized(GPT2_SMALL_SIZED)]
    missing = [str(m) for m in models if not (m / "config.json").is_file()]
    if missing:
        raise argparse.ArgumentError(None, f"not a model folder: {', '.join(missing)}")

    def progress(what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)

    host = machine()  # the load before this run's own
    rows = [row for folder in models for row in bench_model(
        folder, work, strategies, engines, args.quantization, progress)]
    print(f"\n{work.n} completions x {work.length} tokens per request, {work.requests} "
          f"requests per strategy, one at a time; {cores} cores; ctranslate2 "
          f"{args.quantization}, unseeded\n")
    print_table(rows)
    compared = comparisons(rows)
    print_comparisons(compared)
    overhead = None
    if args.overhead_requests:
        progress("front overhead")
        overhead = front_overhead(work, args.overhead_requests)
        print(f"\nfront overhead, n={work.n} against instant workers: end to end p50 "
              f"{overhead['front_p50_ms']:.2f} ms, p95 {overhead['front_p95_ms']:.2f} ms; "
              f"inside the front p50 {overhead['front_inside_p50_ms']:.2f} ms "
              f"(one direct worker hop: p50 {overhead['one_worker_hop_p50_ms']:.2f} ms)")
    if args.json:
        args.json.write_text(json.dumps({"machine": {**host, "load_average_end": load_average()},
                                         "workload": asdict(work),
                                         "engines": list(engines),
                                         "quantization": args.quantization,
                                         "results": rows, "comparisons": compared,
                                         "front_overhead": overhead}, indent=2) + "\n")
    return 0
