"""How many workers should a pool run? Measure 1, 2, ... W of them under load and say.

    fanout capacity --pool small --users 8 --think 1 --slo-p95 2 --out capacity/

For each worker count w it writes a layout holding only that pool, its slots repeated
cyclically to w, on free loopback ports; starts it with the serve supervisor; warms it
up; drives a closed-loop load of simulated editor users at the front (fanout.tools.load) for
a fixed time while sampling the processes' memory and CPU; and stops everything before
the next step. It then prints a table, writes capacity.json, capacity.csv and
capacity.png to --out, and recommends the count with the highest completions/s among
those with no errors and p95 within the SLO, saying what saturates beyond it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import yaml

from fanout.launch.memory_fit import DeviceFit, describe_fit, fit_report, gpu_memory, nvidia_smi
from fanout.launch.serve import running_tiers
from fanout.layout import FRONT_BIND_ENV, Layout, Pool, load_layout
from fanout.tools.load import LoadResult, Record, run_load
from fanout.tools.ports import free_port

MiB = 2**20
CONTEXT = ("In his address to the Congress, the President spoke of the state of the "
           "nation, of its economy and of the work that remains to be done. He said that")
# Without --workers: past twice the cores, CPU workers only time-share them, so
# throughput cannot rise further. A GPU runs a few batch-1 decoders side by side; 8 per
# GPU bounds the run's length rather than marking a measured knee. Steps run one after
# another (each starts a pool), so the whole default run is capped too.
CPU_WORKERS_PER_CORE = 2
WORKERS_PER_GPU = 8
MAX_DEFAULT_WORKERS = 16
SAMPLE_SECONDS = 0.5
BUSY = 90.0  # percent: a resource used this much is saturated


@dataclass(frozen=True)
class Settings:
    users: int
    think: float
    duration: float
    warmup: float
    slo_p95: float
    length: int
    n_samples: int
    start_timeout: float

    def body(self, pool: str) -> dict[str, Any]:
        return {"context": CONTEXT, "model_size": pool, "n_samples": self.n_samples,
                "length": self.length}


@dataclass(frozen=True)
class Usage:
    """What the step's processes used while the load ran."""

    worker_rss_bytes: tuple[int, ...]  # peak, per worker
    worker_gpu_bytes: tuple[int | None, ...]  # at the end, per worker; None: no figure
    pool_cpu_percent: float  # the pool's CPU seconds / wall time / cores
    front_cpu_percent: float  # of one core: the front is one process
    host_cpu_percent: float  # every process on the host, this tool's users included
    host_memory_percent: float  # peak
    gpu_memory_percent: float | None  # the pool's fullest GPU, at the end


@dataclass(frozen=True)
class Step:
    workers: int
    devices: tuple[str, ...]
    load: LoadResult
    usage: Usage
    warmup_requests: int

    @property
    def p95(self) -> float | None:
        return self.load.latency(95)

    def meets(self, slo: float) -> bool:
        return self.load.errors == 0 and self.p95 is not None and self.p95 <= slo

    def row(self) -> dict[str, Any]:
        usage = {key: list(value) if isinstance(value, tuple) else value
                 for key, value in asdict(self.usage).items()}
        return {"workers": self.workers, "devices": list(self.devices), **self.load.summary(),
                "warmup_requests": self.warmup_requests, **usage,
                "bottleneck": bottleneck(self)}


@dataclass(frozen=True)
class Recommendation:
    workers: int | None
    reason: str


# --- one step ------------------------------------------------------------------------------

def step_layout(layout: Layout, pool: Pool, workers: int, path: Path) -> Layout:
    """``layout`` reduced to ``pool`` with ``workers`` slots, on free loopback ports."""
    slots = [pool.slots[i % len(pool.slots)] for i in range(workers)]
    front = layout.front
    document = {
        "front": {"bind": f"127.0.0.1:{free_port()}", "threads": front.threads,
                  "max_samples": front.max_samples, "network_slack": front.network_slack,
                  "max_body_bytes": front.max_body_bytes, "max_inflight": front.max_inflight,
                  "max_queued_samples": front.max_queued_samples},  # a private front: no keys
        # and no edge: all the load comes from one address, which the edge's per-client
        # limits would throttle; the figures are the pool's and the front's.
        "edge": {"enabled": False},
        "generation": {"defaults": asdict(layout.defaults), "limits": asdict(layout.limits)},
        "pools": {pool.name: {
            # load_layout made a folder absolute; a hub id stays an id.
            "model": str(pool.model.path) if pool.model.path else pool.model.source,
            "engine": pool.engine,
            **({"quantization": pool.quantization} if pool.quantization else
               {"dtype": pool.dtype}),
            "batch": pool.batch,
            "bind": f"127.0.0.1:{free_port()}",
            "worker_timeout": pool.worker_timeout, "allow_pickle": pool.model.allow_pickle,
            "slots": [{"device": s.device, "threads": s.threads,
                       **({"cpus": list(s.cpus)} if s.cpus else {})} for s in slots]}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_layout(path)


class UsageSampler:
    """Samples the pool's and the front's processes on a thread while the load runs."""

    def __init__(self, pool_master: int, front_master: int, gpus: list[int]) -> None:
        self.pool_master, self.front_master, self.gpus = pool_master, front_master, gpus
        self.cpu: dict[int, tuple[float, float]] = {}  # pid -> (first, last) CPU seconds
        self.front: set[int] = set()
        self.rss: dict[int, int] = {}  # worker pid -> peak RSS
        self.host_memory = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
        self.started = self.wall = self.host_cpu = 0.0

    def __enter__(self) -> UsageSampler:
        psutil.cpu_percent(interval=None)  # starts the host-wide CPU count from now
        self.started = time.monotonic()
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()
        self.wall = time.monotonic() - self.started
        self.host_cpu = psutil.cpu_percent(interval=None)

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        self.host_memory = max(self.host_memory, psutil.virtual_memory().percent)
        for master in (self.pool_master, self.front_master):
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(master)
                for process in (parent, *parent.children()):
                    self._sample_process(process, is_worker=process.pid != master
                                         and master == self.pool_master)
                    if master == self.front_master:
                        self.front.add(process.pid)

    def _sample_process(self, process: psutil.Process, is_worker: bool) -> None:
        # A worker respawned mid-step is counted from its first sample: a little lost CPU.
        with contextlib.suppress(psutil.Error), process.oneshot():
            times = process.cpu_times()
            seconds = times.user + times.system
            first = self.cpu.get(process.pid, (seconds, seconds))[0]
            self.cpu[process.pid] = (first, seconds)
            if is_worker:
                rss = process.memory_info().rss
                self.rss[process.pid] = max(rss, self.rss.get(process.pid, 0))

    def usage(self, cores: int) -> Usage:
        def busy(pids: set[int]) -> float:
            used = sum(last - first for pid, (first, last) in self.cpu.items() if pid in pids)
            return 100 * used / self.wall if self.wall > 0 else 0.0

        pool = set(self.cpu) - self.front
        gpu_bytes = _gpu_process_bytes() if self.gpus else {}
        gpus = gpu_memory() if self.gpus else {}
        fullest = max((100 * gpus[g].used / gpus[g].total for g in self.gpus if g in gpus),
                      default=None)
        return Usage(worker_rss_bytes=tuple(self.rss.values()),
                     worker_gpu_bytes=tuple(gpu_bytes.get(pid) for pid in self.rss),
                     pool_cpu_percent=busy(pool) / cores, front_cpu_percent=busy(self.front),
                     host_cpu_percent=self.host_cpu, host_memory_percent=self.host_memory,
                     gpu_memory_percent=fullest)


def _gpu_process_bytes() -> dict[int, int]:
    """pid -> GPU bytes. In a container nvidia-smi may show host pids: then none match."""
    rows = nvidia_smi("--query-compute-apps=pid,used_memory") or []
    return {int(pid): int(mib) * MiB for pid, mib in rows if pid.isdigit() and mib.isdigit()}


def run_step(layout: Layout, pool: Pool, workers: int, settings: Settings, out: Path,
             progress: Progress) -> Step:
    steps = out / "steps"
    step = step_layout(layout, pool, workers, steps / f"workers-{workers}.yaml")
    step_pool = step.pools[pool.name]
    # The front's own deadline plus room to queue for one of its threads.
    timeout = step.defaults.max_time + step.front.network_slack + 30
    body = settings.body(pool.name)
    progress.starting(workers)
    log_path = steps / f"workers-{workers}.log"
    with running_tiers(step, log_path, settings.start_timeout) as supervisor:
        url = step.front.bind.url
        warmup_requests = 0
        if settings.warmup > 0:
            progress.phase(f"{workers} workers: warm-up", settings.warmup)
            warm = run_load(url, body, settings.users, settings.warmup, settings.think,
                            timeout, on_record=progress.tick)
            warmup_requests = warm.requests
        progress.phase(f"{workers} workers: load", settings.duration)
        gpus = sorted({s.cuda_index for s in step_pool.slots if s.cuda_index is not None})
        with UsageSampler(supervisor.running[f"pool-{pool.name}"][1].pid,
                          supervisor.running["front"][1].pid, gpus) as sampler:
            load = run_load(url, body, settings.users, settings.duration, settings.think,
                            timeout, on_record=progress.tick)
        usage = sampler.usage(cores())  # while the workers live: nvidia-smi lists them
        progress.done_step()
    return Step(workers, step_pool.devices, load, usage, warmup_requests)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


class Progress:
    """A tqdm bar over the seconds of load in the whole run; quiet when not on a terminal."""

    def __init__(self, steps: int, settings: Settings) -> None:
        from tqdm import tqdm

        self.per_step = settings.warmup + settings.duration
        self.bar = tqdm(total=steps * self.per_step, unit="s", disable=None,
                        bar_format="{desc} |{bar}| {n:.0f}/{total:.0f} s of load {postfix}")
        self.finished = 0.0  # seconds of load in finished phases
        self.origin = self.length = 0.0
        self.requests = self.errors = 0

    def starting(self, workers: int) -> None:
        self.bar.set_description(f"{workers} workers: starting")

    def phase(self, label: str, seconds: float) -> None:
        self.bar.set_description(label)
        self.origin, self.length = time.monotonic(), seconds

    def tick(self, record: Record) -> None:
        self.requests += 1
        self.errors += not record.ok
        done = self.finished + min(self.length, time.monotonic() - self.origin)
        self.bar.set_postfix_str(f"{self.requests} requests, {self.errors} errors",
                                 refresh=False)
        self.bar.update(max(0.0, done - self.bar.n))

    def done_step(self) -> None:
        self.finished += self.per_step
        self.bar.update(self.finished - self.bar.n)

    def close(self) -> None:
        self.bar.close()


# --- choosing ----------------------------------------------------------------------------

def default_max_workers(pool: Pool, fits: list[DeviceFit], n_samples: int) -> tuple[int, str]:
    """W when --workers is not given, and why."""
    compute, why = 0, []
    for device in dict.fromkeys(pool.devices):
        if device == "cpu":
            threads = max(s.threads for s in pool.slots if s.device == "cpu")
            count = max(n_samples, CPU_WORKERS_PER_CORE * cores() // threads)
            why.append(f"cpu: {CPU_WORKERS_PER_CORE} x {cores()} cores / {threads} threads"
                       f" (at least n_samples {n_samples}) = {count}")
        else:
            count = WORKERS_PER_GPU
            why.append(f"{device}: {WORKERS_PER_GPU}")
        compute += count
    fit_counts = [f.fits(pool.name) for f in fits if f.device in pool.devices]
    reasons = [f"compute ({'; '.join(why)})"]
    limit = compute
    if fit_counts and all(c is not None for c in fit_counts):
        memory = sum(c for c in fit_counts if c is not None)
        reasons.append(f"memory fit {memory}")
        limit = min(limit, memory)
    else:
        reasons.append("memory fit unknown")
    workers = max(1, min(limit, MAX_DEFAULT_WORKERS))
    return workers, (f"--workers not given: {workers} = the least of {', '.join(reasons)}, "
                     f"run cap {MAX_DEFAULT_WORKERS}")


def bottleneck(step: Step) -> str:
    """The resource a step used up, in a word ('' if none was)."""
    usage = step.usage
    if usage.pool_cpu_percent >= BUSY or usage.host_cpu_percent >= BUSY:
        return "cpu"
    if usage.front_cpu_percent >= BUSY:
        return "front"
    if usage.host_memory_percent >= BUSY or (usage.gpu_memory_percent or 0) >= BUSY:
        return "memory"
    return ""


def explain(step: Step, settings: Settings) -> str:
    usage, n = step.usage, step.workers
    said = {
        "cpu": f"CPU-bound at {_workers(n)}: the pool used {usage.pool_cpu_percent:.0f}% of "
               f"{cores()} cores, the host {usage.host_cpu_percent:.0f}% (other processes "
               "included)",
        "front": f"front-bound at {_workers(n)}: the one front process used "
                 f"{usage.front_cpu_percent:.0f}% of a core",
        "memory": f"memory-bound at {_workers(n)}: host memory {usage.host_memory_percent:.0f}%"
                  f" used, GPU {usage.gpu_memory_percent or 0:.0f}%",
    }.get(bottleneck(step), "")
    in_flight = settings.users * settings.n_samples
    if not said and n >= in_flight:
        said = (f"load-bound: {settings.users} users x {settings.n_samples} samples keep at "
                f"most {in_flight} workers busy; add --users to load more")
    return said


TIE_FRACTION = 0.05


def recommend(steps: list[Step], settings: Settings) -> Recommendation:
    """The highest completions/s with no errors and p95 within the SLO; and why."""
    slo = settings.slo_p95
    good = [s for s in steps if s.meets(slo)]
    if not good:
        best = min((s for s in steps if s.p95 is not None), key=lambda s: s.p95 or 0.0,
                   default=None)
        lowest = (f"; the lowest p95 was {best.p95:.2f} s at {_workers(best.workers)}"
                  if best else "; no request succeeded")
        return Recommendation(None, f"no worker count kept p95 <= {slo:g} s without errors"
                                    f"{lowest}. Fewer users, a shorter --length or faster "
                                    "devices.")
    # Throughputs within TIE_FRACTION of the best are the same within a run's noise;
    # among them the fewest workers win: the same service for less memory.
    best = max(good, key=lambda s: (s.load.completions_per_second, -s.workers))
    floor = best.load.completions_per_second * (1 - TIE_FRACTION)
    chosen = min((s for s in good if s.load.completions_per_second >= floor),
                 key=lambda s: s.workers)
    reasons = [f"{_workers(chosen.workers)}: {chosen.load.completions_per_second:.2f} "
               f"completions/s with p95 {chosen.p95:.2f} s <= SLO {slo:g} s and no errors."]
    if chosen is not best:
        reasons.append(f"{_workers(best.workers)} reached "
                       f"{best.load.completions_per_second:.2f}/s, within "
                       f"{TIE_FRACTION:.0%}: no gain worth the memory.")
    later = [s for s in steps if s.workers > chosen.workers]
    if later:
        reasons.append(_beyond(chosen, later[0], slo))
    elif len(steps) > 1:
        reasons.append(f"It is the largest count tried ({chosen.workers}); "
                       "try a larger --workers to see whether throughput still rises.")
    saturated = explain(later[0] if later else chosen, settings)
    if saturated:
        reasons.append(saturated[0].upper() + saturated[1:] + ".")
    return Recommendation(chosen.workers, " ".join(reasons))


def _beyond(chosen: Step, after: Step, slo: float) -> str:
    if after.load.errors:
        return f"{_workers(after.workers)} had {after.load.errors} errors."
    if after.p95 is None or after.p95 > slo:
        p95 = "no answer" if after.p95 is None else f"{after.p95:.2f} s"
        return f"{_workers(after.workers)} broke the SLO (p95 {p95})."
    # It met the SLO, so its throughput was at most TIE_FRACTION above the chosen one's.
    base = chosen.load.completions_per_second
    gain = after.load.completions_per_second / base - 1 if base else 0.0
    return (f"Workers saturated: {_workers(after.workers)} changed throughput by {gain:+.0%}"
            f" while p95 went from {chosen.p95:.2f} s to {after.p95:.2f} s.")


def _workers(count: int) -> str:
    return "1 worker" if count == 1 else f"{count} workers"


# --- reporting ------------------------------------------------------------------------------

def table(steps: list[Step]) -> str:
    lines = [f"{'workers':>7} {'req/s':>7} {'compl/s':>8} {'p50 s':>7} {'p95 s':>7} "
             f"{'p99 s':>7} {'errors':>6} {'RSS/worker':>10} {'GPU/worker':>10} "
             f"{'pool CPU':>8} {'host CPU':>8} {'bound':>6}"]
    for step in steps:
        load, usage = step.load, step.usage
        gpu = [b for b in usage.worker_gpu_bytes if b is not None]
        lines.append(
            f"{step.workers:>7} {load.requests_per_second:>7.2f} "
            f"{load.completions_per_second:>8.2f} {_seconds(load.latency(50)):>7} "
            f"{_seconds(load.latency(95)):>7} {_seconds(load.latency(99)):>7} "
            f"{load.errors:>6} {_mib(usage.worker_rss_bytes):>10} {_mib(gpu):>10} "
            f"{usage.pool_cpu_percent:>7.0f}% {usage.host_cpu_percent:>7.0f}% "
            f"{bottleneck(step) or '-':>6}")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mib(values: Sequence[int]) -> str:
    return f"{max(values) / MiB:.0f} MiB" if values else "-"


def write_csv(path: Path, steps: list[Step]) -> None:
    rows = [{key: ";".join(map(str, value)) if isinstance(value, list)  # one per worker
             else json.dumps(value) if isinstance(value, dict) else value
             for key, value in step.row().items()} for step in steps]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["workers"])
        writer.writeheader()
        writer.writerows(rows)


def plot(path: Path, steps: list[Step], settings: Settings, pool: str,
         chosen: int | None) -> None:
    """Throughput and p95 latency against worker count, with the SLO and the choice."""
    # The object API draws without pyplot, so no GUI backend is ever looked for.
    from matplotlib.figure import Figure

    workers = [s.workers for s in steps]
    figure = Figure(figsize=(7.5, 5), layout="constrained")
    rate = figure.add_subplot()
    rate.plot(workers, [s.load.completions_per_second for s in steps], "o-",
              color="tab:blue", label="completions/s")
    rate.plot(workers, [s.load.requests_per_second for s in steps], "s--",
              color="tab:cyan", label="requests/s")
    rate.set_xlabel("workers")
    rate.set_ylabel("throughput (per second)")
    rate.set_xticks(workers)
    rate.set_xlim(min(workers) - 0.5, max(workers) + 0.5)
    rate.set_ylim(bottom=0, top=1.15 * max(s.load.completions_per_second for s in steps)
                  or 1.0)
    latency = rate.twinx()
    p95 = [s.p95 for s in steps]
    latency.plot(workers, [float("nan") if v is None else v for v in p95], "^-",
                 color="tab:red", label="p95 latency")
    latency.axhline(settings.slo_p95, color="tab:red", linestyle=":",
                    label=f"SLO p95 {settings.slo_p95:g} s")
    latency.set_ylabel("p95 latency (s)")
    latency.set_ylim(bottom=0, top=1.15 * max([settings.slo_p95, *(v for v in p95 if v)]))
    if chosen is not None:
        rate.axvline(chosen, color="tab:green", alpha=0.3, linewidth=4, label="recommended")
    handles = rate.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize="small")
    rate.set_title(f"pool {pool}: {settings.users} users, n_samples {settings.n_samples}, "
                   f"think {settings.think:g} s")
    figure.savefig(path, dpi=110)


def write_reports(out: Path, report: dict[str, Any], steps: list[Step], settings: Settings,
                  pool: str, chosen: int | None) -> None:
    (out / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
    write_csv(out / "capacity.csv", steps)
    plot(out / "capacity.png", steps, settings, pool, chosen)


# --- the command -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", help="the pool to size (default: the layout's first)")
    parser.add_argument("--workers", type=int, help="largest worker count to try (default: "
                        "what fits in memory, capped by cores or GPUs; see the JSON)")
    parser.add_argument("--users", type=int, default=4, help="concurrent editor users (default 4)")
    parser.add_argument("--think", type=float, default=1.0,
                        help="seconds a user waits between answer and next request "
                             "(default 1)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of measured load per worker count (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of unmeasured load first, per worker count "
                             "(default 5)")
    parser.add_argument("--slo-p95", type=float, default=2.0,
                        help="p95 latency target in seconds (default 2)")
    parser.add_argument("--length", type=int, help="new tokens per completion "
                                                   "(default: the layout's default)")
    parser.add_argument("--n-samples", type=int, default=3,
                        help="completions per request (default 3)")
    parser.add_argument("--start-timeout", type=float, default=300.0,
                        help="seconds to wait for each step's workers to load "
                             "(default 300)")
    parser.add_argument("--out", type=Path, default=Path("capacity"),
                        help="folder for capacity.json, .csv, .png and the step logs "
                             "(default ./capacity)")


def check(args: argparse.Namespace, layout: Layout) -> str | None:
    """What is wrong with the arguments for this layout, if anything."""
    if args.pool is not None and args.pool not in layout.pools:
        return f"no pool {args.pool!r} in {layout.source} (pools: {', '.join(layout.pools)})"
    if args.workers is not None and args.workers < 1:
        return "--workers must be at least 1"
    if args.users < 1:
        return "--users must be at least 1"
    if args.duration <= 0 or args.warmup < 0 or args.think < 0 or args.slo_p95 <= 0:
        return "--duration and --slo-p95 must be positive, --warmup and --think not negative"
    if not 1 <= args.n_samples <= layout.front.max_samples:
        return f"--n-samples must be 1..{layout.front.max_samples} (front.max_samples)"
    if args.length is not None and not 1 <= args.length <= layout.limits.length:
        return f"--length must be 1..{layout.limits.length} (generation.limits.length)"
    return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def measure(layout: Layout, pool: Pool, workers: int, settings: Settings,
            out: Path) -> tuple[list[Step], str | None]:
    """The steps 1..workers, stopping at the first that cannot start (and saying why)."""
    progress = Progress(workers, settings)
    steps: list[Step] = []
    try:
        for count in range(1, workers + 1):
            steps.append(run_step(layout, pool, count, settings, out, progress))
    except RuntimeError as error:  # e.g. out of memory at this count: a finding too
        return steps, f"{len(steps) + 1} workers did not start: {error}"
    finally:
        progress.close()
    return steps, None


def run(args: argparse.Namespace, layout: Layout) -> int:
    """``fanout capacity``: measure the steps, write the reports, recommend a count."""
    if problem := check(args, layout):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # Each step's front binds a free port; an inherited override would send them all to one.
    os.environ.pop(FRONT_BIND_ENV, None)
    pool = layout.pools[args.pool] if args.pool else layout.default_pool
    settings = Settings(users=args.users, think=args.think, duration=args.duration,
                        warmup=args.warmup, slo_p95=args.slo_p95,
                        length=args.length or layout.defaults.length,
                        n_samples=args.n_samples, start_timeout=args.start_timeout)
    fits = fit_report(layout, [pool])
    workers, why = ((args.workers, "--workers given") if args.workers
                    else default_max_workers(pool, fits, settings.n_samples))
    print(f"sizing pool {pool.name} ({pool.model.source}, {pool.engine} {pool.precision}) "
          f"from {layout.source}"
          f"\n  1..{workers} workers ({why})\n  {settings.users} users, think "
          f"{settings.think:g} s, n_samples {settings.n_samples}, length {settings.length}, "
          f"{settings.warmup:g} s warm-up + {settings.duration:g} s per step\n"
          f"memory fit (estimate):\n{describe_fit(fits)}", flush=True)
    if settings.users > layout.front.threads:
        print(f"note: the front serves {layout.front.threads} requests at once "
              "(front.threads); the other users queue there", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the tiers on kill -TERM as on Ctrl-C
    try:
        steps, failure = measure(layout, pool, workers, settings, args.out)
    except KeyboardInterrupt:
        print("interrupted: every tier is stopped", file=sys.stderr)
        return 130
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        if not steps:
            return 1
    choice = recommend(steps, settings)
    report = {"layout": str(layout.source), "pool": pool.name, "model": pool.model.source,
              "engine": pool.engine, "precision": pool.precision,
              "slots": list(pool.devices), "settings": asdict(settings),
              "host": {"cores": cores(), "memory_bytes": psutil.virtual_memory().total},
              "max_workers": workers, "max_workers_reason": why,
              "memory_fit": [fit.to_json() for fit in fits],
              "steps": [step.row() for step in steps], "failure": failure,
              "recommendation": asdict(choice)}
    write_reports(args.out, report, steps, settings, pool.name, choice.workers)
    print(f"\n{table(steps)}\n\nrecommended: "
          f"{choice.workers if choice.workers else 'none'}\n  {choice.reason}\n"
          f"wrote {args.out}/capacity.json, capacity.csv, capacity.png", flush=True)
    return 0

