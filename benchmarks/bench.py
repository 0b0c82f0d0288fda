"""The same work under every way of serving it: n completions of L new tokens, one model.

    .venv/bin/python scripts/bench.py [--model DIR ...] [--n 3] [--length 20] [--json F]

Strategies, each measured in this one run on this one machine, one request at a time:

- ``naive``: one model process generates the n samples one after another (all cores);
- ``multi-worker naive``: n model processes, but a request's n samples still run
  sequentially in one of them (more workers help throughput, never one request's latency);
- ``fan-out``: the two tiers as built: the front sends n HTTP requests to n sync workers;
- ``batched``: one model process generates the n samples in one batched call;
- ``floor``: n model processes each generate one sample, handed over through pipes with
  no HTTP at all: the best this hardware can do with this model code.

fan-out and floor use the same processes x threads; naive and batched get every core.
Every strategy uses the same seeds, so the sampled sequences (and their work) match.
The front's own overhead is measured separately against a worker tier that answers at
once (``benchmarks.instant_worker``).
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

from benchmarks.inprocess import Job, ModelProcess, close_all, start_processes
from fanout.capacity import CONTEXT
from fanout.layout import Layout, load_layout
from fanout.load import percentile as load_percentile
from fanout.params import GenerationParams
from fanout.ports import free_port
from fanout.serve import Supervisor, running_tiers
from fanout.tiers import tiers

REPO = Path(__file__).resolve().parent.parent
GPT2_SMALL_SIZED = REPO / ".cache" / "models" / "gpt2-124m-random"
DEFAULT_MODELS = (REPO / "models" / "small", REPO / "models" / "medium", GPT2_SMALL_SIZED)
START_SECONDS = 300.0


@dataclass(frozen=True)
class Workload:
    n: int
    length: int
    requests: int
    warmup: int
    threads_per_sample: int  # fan-out and floor: each of the n processes
    cores: int  # naive and batched: their one process

    def params(self, request: int) -> GenerationParams:
        """Request r's parameters; sample i uses seed 1000 r + i in every strategy."""
        return GenerationParams(context=CONTEXT, length=self.length, temperature=1.0,
                                top_k=40, top_p=0.9, max_time=120.0, seed=1000 * request)


@dataclass
class Result:
    strategy: str
    model: str
    processes: int
    threads: int
    seconds: list[float] = field(default_factory=list)
    tokens: int = 0
    memory_bytes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p95(self) -> float:
        return percentile(self.seconds, 95)

    def summary(self, floor: float | None) -> dict[str, Any]:
        return {"strategy": self.strategy, "model": self.model, "processes": self.processes,
                "threads": self.threads, "requests": len(self.seconds),
                "median_s": round(self.median, 4), "p95_s": round(self.p95, 4),
                "x_floor": round(self.median / floor, 3) if floor else None,
                "tokens": self.tokens, "memory_mib": round(self.memory_bytes / 2**20, 1)}


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

def run_inprocess(strategy: str, folder: Path, work: Workload) -> Result:
    plans = {  # strategy -> (processes, threads, job kind, samples per job)
        "naive": (1, work.cores, "sequential", work.n),
        "multi-worker naive": (work.n, work.threads_per_sample, "sequential", work.n),
        "batched": (1, work.cores, "batched", work.n),
        "floor": (work.n, work.threads_per_sample, "sequential", 1),
    }
    count, threads, kind, per_job = plans[strategy]
    processes = start_processes(folder, count, threads)
    turn = iter(range(1 << 30))
    try:
        def one_request(params: GenerationParams) -> int:
            if strategy == "floor":  # n processes, one sample each, all at once
                jobs = [Job(kind, params.with_seed((params.seed or 0) + i), 1)
                        for i in range(work.n)]
                return _all_at_once(processes, jobs)
            process = processes[next(turn) % count]  # round robin: always an idle one
            return sum(process.run(Job(kind, params, per_job)).tokens)

        seconds, tokens = measure(work, one_request)
        memory = sum(p.rss_bytes for p in processes)
    finally:
        close_all(processes)
    return Result(strategy, folder.name, count, threads, seconds, tokens, memory)


def _all_at_once(processes: list[ModelProcess], jobs: list[Job]) -> int:
    sent = [(process, process.send(job)) for process, job in zip(processes, jobs, strict=True)]
    return sum(sum(process.receive(started).tokens) for process, started in sent)


# --- strategies over HTTP ----------------------------------------------------------------

def bench_layout(folder: Path | None, work: Workload, directory: Path) -> Layout:
    """One pool of n single-purpose slots and a front, on free loopback ports."""
    pool = {"model": str(folder or REPO / "models" / "small"), "dtype": "float32",
            "bind": f"127.0.0.1:{free_port()}", "worker_timeout": 300,
            "slots": [{"device": "cpu", "threads": work.threads_per_sample}] * work.n}
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
        # benchmarks/ is not installed with the package: point gunicorn at the checkout.
        tier_list = [replace(tier, argv=(*tier.argv[:-1], "--pythonpath", str(REPO),
                                         worker_app))
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
    response = session.post(f"{url}/autocomplete", timeout=300,
                            json={**params.to_json(), "n_samples": n})
    if response.status_code != 200:
        raise RuntimeError(f"the front answered {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body


def run_fanout(folder: Path, work: Workload) -> Result:
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as directory:
        layout = bench_layout(folder, work, Path(directory))
        with running(layout) as supervisor, client_session() as session:
            url = layout.front.bind.url

            def one_request(params: GenerationParams) -> int:
                body = autocomplete(session, url, params, work.n)
                return sum(int(s["tokens"]) for s in body["sentences"])

            seconds, tokens = measure(work, one_request)
            pool_master = supervisor.running["pool-bench"][1].pid
            workers = psutil.Process(pool_master).children()
            memory = sum(w.memory_info().rss for w in workers)
    return Result("fan-out", folder.name, work.n, work.threads_per_sample, seconds, tokens,
                  memory)


def front_overhead(work: Workload, requests_count: int) -> dict[str, Any]:
    """The front's cost: a fan-out of n against workers that answer at once."""
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as directory:
        layout = bench_layout(None, work, Path(directory))
        with running(layout, "benchmarks.instant_worker:get_app()"), \
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


def bench_model(folder: Path, work: Workload, strategies: tuple[str, ...],
                progress: Callable[[str], None]) -> list[dict[str, Any]]:
    results = []
    for strategy in strategies:
        progress(f"{folder.name}: {strategy}")
        results.append(run_fanout(folder, work) if strategy == "fan-out"
                       else run_inprocess(strategy, folder, work))
    floor = next((r.median for r in results if r.strategy == "floor"), None)
    return [r.summary(floor) for r in results]


def ensure_gpt2_small_sized(folder: Path) -> Path:
    """GPT-2 small's shape (124M parameters), random weights: fair for timing."""
    from fanout.tiny_model import ensure_tiny_model

    return ensure_tiny_model(folder, layers=12, width=768, heads=12, window=1024)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib":
            round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "torch": metadata.version("torch"), "transformers": metadata.version("transformers")}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'model':<18} {'strategy':<19} {'procs x thr':>11} {'median s':>9} "
              f"{'p95 s':>8} {'x floor':>8} {'tokens':>7} {'memory MiB':>11}")
    print(header)
    for r in rows:
        ratio = f"{r['x_floor']:.2f}" if r["x_floor"] is not None else "-"
        print(f"{r['model']:<18} {r['strategy']:<19} {r['processes']:>6} x {r['threads']:<2} "
              f"{r['median_s']:>9.3f} {r['p95_s']:>8.3f} {ratio:>8} {r['tokens']:>7} "
              f"{r['memory_mib']:>11.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="model folder (repeatable; default: the shipped small and "
                             "medium, and a random GPT-2-small-sized model)")
    parser.add_argument("--n", type=int, default=3, help="completions per request")
    parser.add_argument("--length", type=int, default=20, help="new tokens per completion")
    parser.add_argument("--requests", type=int, default=10, help="timed requests per strategy")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests first")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated subset of: {', '.join(STRATEGIES)}")
    parser.add_argument("--overhead-requests", type=int, default=300,
                        help="requests timed against the instant worker tier (0: skip)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    cores = os.cpu_count() or 1
    work = Workload(n=args.n, length=args.length, requests=args.requests,
                    warmup=args.warmup, threads_per_sample=max(1, cores // args.n),
                    cores=cores)
    models = args.model or [m for m in DEFAULT_MODELS if m != GPT2_SMALL_SIZED] + [
        ensure_gpt2_small_sized(GPT2_SMALL_SIZED)]
    missing = [str(m) for m in models if not (m / "config.json").is_file()]
    if missing:
        parser.error(f"not a model folder: {', '.join(missing)}")

    def progress(what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)

    rows = [row for folder in models for row in bench_model(folder, work, strategies,
                                                              progress)]
    print(f"\n{work.n} completions x {work.length} tokens per request, {work.requests} "
          f"requests per strategy, one at a time; {cores} cores\n")
    print_table(rows)
    overhead = None
    if args.overhead_requests:
        progress("front overhead")
        overhead = front_overhead(work, args.overhead_requests)
        print(f"\nfront overhead, n={work.n} against instant workers: end to end p50 "
              f"{overhead['front_p50_ms']:.2f} ms, p95 {overhead['front_p95_ms']:.2f} ms; "
              f"inside the front p50 {overhead['front_inside_p50_ms']:.2f} ms "
              f"(one direct worker hop: p50 {overhead['one_worker_hop_p50_ms']:.2f} ms)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "workload": asdict(work),
                                         "results": rows, "front_overhead": overhead},
                                        indent=2) + "\n")
