"""A bounded soak: N editor clients against real tiers for a set time, then the books.

    fanout soak --clients 16 --duration 600 --json docs/soak.json

It starts the layout's front and one pool on free loopback ports (like the capacity
tool), warms them up, records the memory of every process, drives a closed-loop load
(``fanout.tools.load``; clients honour Retry-After), records memory again, stops everything
and reports: requests sent and answered, by status; latency percentiles; memory per
process at start and end. It checks the books balance (every request sent got exactly
one answer, and the front's count of 503s matches the clients') and exits non-zero when
a request was lost, a 5xx other than a deliberate 503 came back, or memory grew more
than ``--max-growth`` percent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import requests
from tqdm import tqdm

from fanout.launch.serve import Supervisor, running_tiers
from fanout.layout import FRONT_BIND_ENV, Layout
from fanout.tools.capacity import CONTEXT, step_layout
from fanout.tools.load import NO_ANSWER, LoadResult, run_load

MiB = 2**20
START_SECONDS = 300.0
SAMPLE_SECONDS = 10.0


@dataclass(frozen=True)
class Settings:
    pool: str
    clients: int
    duration: float
    warmup: float
    think: float
    n_samples: int
    length: int
    max_growth_percent: float
    ceiling_seconds: float = 0.0  # > 0: first measure the engine alone that long
    contexts: str = "same"  # "own": each client its own context, of its own length


def process_memory(supervisor: Supervisor) -> dict[str, int]:
    """RSS of every process of every tier, by a name that says what it is."""
    memory: dict[str, int] = {}
    for name, (_, process) in supervisor.running.items():
        with contextlib.suppress(psutil.Error):
            master = psutil.Process(process.pid)
            memory[f"{name} master"] = master.memory_info().rss
            for child in master.children():
                with contextlib.suppress(psutil.Error):
                    memory[f"{name} worker {child.pid}"] = child.memory_info().rss
    return memory


def front_rejections(url: str) -> int | None:
    """The front's own count of the requests it refused with 503 (from /health)."""
    try:
        return int(requests.get(f"{url}/health", timeout=5).json()["load"]["rejected"])
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


def growth(start: dict[str, int], end: dict[str, int]) -> dict[str, Any]:
    """Per-process growth; a process present at only one end (respawned) is named."""
    both = sorted(set(start) & set(end))
    per = {name: 100 * (end[name] - start[name]) / start[name] for name in both}
    total_start, total_end = sum(start[n] for n in both), sum(end[n] for n in both)
    return {"per_process_percent": {n: round(v, 2) for n, v in per.items()},
            "max_percent": round(max(per.values(), default=0.0), 2),
            "total_percent": round(100 * (total_end - total_start) / total_start, 2)
            if total_start else 0.0,
            "gone": sorted(set(start) - set(end)), "new": sorted(set(end) - set(start))}


def verdict(result: LoadResult, memory: dict[str, Any], rejected_by_front: int | None,
            max_growth: float) -> list[str]:
    """What failed the soak; empty when it passed."""
    problems = []
    by_status = result.by_status
    if sum(by_status.values()) != result.requests:
        problems.append("the books do not balance: answers by status != requests sent")
    if lost := by_status.get(NO_ANSWER, 0):
        problems.append(f"{lost} requests got no answer")
    if bad := {s: n for s, n in by_status.items() if s >= 500 and s != 503}:
        problems.append(f"unexpected 5xx answers: {bad}")
    if rejected_by_front is not None and rejected_by_front != by_status.get(503, 0):
        problems.append(f"the front counted {rejected_by_front} 503s, the clients "
                        f"{by_status.get(503, 0)}")
    if memory["max_percent"] >= max_growth:
        problems.append(f"memory grew {memory['max_percent']:.1f}% (limit {max_growth:g}%)")
    if memory["gone"]:
        problems.append(f"processes died during the soak: {', '.join(memory['gone'])}")
    return problems


def soak(layout: Layout, settings: Settings, log_path: Path) -> dict[str, Any]:
    pool = layout.pools[settings.pool]
    body = {"context": CONTEXT, "model_size": pool.name, "n_samples": settings.n_samples,
            "length": settings.length}
    # With "own" contexts, client i drops the last i words: every client's prompt has a
    # length of its own, as editors' texts do, and queued samples share a batch only with
    # their own Tab's or those of prompts near in length (worker_api.engines).
    words = CONTEXT.split()
    bodies = ([{**body, "context": " ".join(words[:max(1, len(words) - i)])}
               for i in range(settings.clients)] if settings.contexts == "own" else [body])
    ceiling = batched = None
    if settings.ceiling_seconds > 0:  # before the tiers start: nothing else on the cores
        from fanout.tools.ceiling import engine_ceiling
        from frontend_api.resources import parse_autocomplete

        # The clients' body read as the front reads it: the same sample for the engine.
        asked = parse_autocomplete(body, layout.defaults, layout.limits, layout.pools,
                                   layout.front.max_samples)
        ceiling = engine_ceiling(pool, asked.params, settings.ceiling_seconds).summary()
        if pool.batch > 1:  # and as the pool's workers decode what queues: whole batches
            batched = engine_ceiling(pool, asked.params, settings.ceiling_seconds,
                                     rows=pool.batch).summary()
    with tempfile.TemporaryDirectory(prefix="fanout-soak-") as directory:
        private = step_layout(layout, pool, len(pool.slots), Path(directory) / "layout.yaml")
        url = private.front.bind.url
        timeout = private.limits.max_time + private.front.network_slack + 30
        with running_tiers(private, log_path, START_SECONDS) as supervisor:
            if settings.warmup > 0:
                run_load(url, bodies, settings.clients, settings.warmup, settings.think,
                         timeout)
            rejected_before = front_rejections(url)
            start = process_memory(supervisor)
            timeline = [{"t": 0.0, "rss_bytes": sum(start.values())}]
            bar = tqdm(total=round(settings.duration), unit="s", desc="soak",
                       bar_format="{desc} {bar} {n_fmt}/{total_fmt} s  {postfix}")
            stop = threading.Event()
            began = time.monotonic()

            def sample() -> None:
                while not stop.wait(1.0):
                    bar.n = min(round(time.monotonic() - began), bar.total)
                    bar.refresh()
                    if (len(timeline) * SAMPLE_SECONDS) <= time.monotonic() - began:
                        timeline.append({"t": round(time.monotonic() - began, 1),
                                         "rss_bytes": sum(process_memory(supervisor).values())})
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                result = run_load(url, bodies, settings.clients, settings.duration,
                                  settings.think, timeout)
            finally:
                stop.set()
                sampler.join()
                bar.close()
            end = process_memory(supervisor)
            rejected_after = front_rejections(url)
    rejected = (rejected_after - rejected_before
                if rejected_after is not None and rejected_before is not None else None)
    memory = growth(start, end)
    problems = verdict(result, memory, rejected, settings.max_growth_percent)
    return {"settings": asdict(settings), "model": pool.model.source,
            "workers": len(pool.slots), "load": result.summary(),
            "by_status": {("no answer" if s == NO_ANSWER else str(s)): n
                          for s, n in result.by_status.items()},
            "partial_answers": result.partial_answers, "rejected_by_front": rejected,
            "engine_ceiling": ceiling, "engine_ceiling_batched": batched,
            "memory": {"start_bytes": start, "end_bytes": end, **memory,
                       "timeline": timeline},
            "machine": {"cores": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
                        "cpu": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
            "problems": problems, "passed": not problems}


def report_text(report: dict[str, Any]) -> str:
    load, memory = report["load"], report["memory"]
    s = report["settings"]
    answered = load["requests"] - report["by_status"].get("no answer", 0)
    lines = [
        f"soak: {s['clients']} clients, think {s['think']:g} s, {s['duration']:g} s, pool "
        f"{s['pool']} ({report['workers']} workers), n_samples {s['n_samples']}, length "
        f"{s['length']}, {'one context each' if s['contexts'] == 'own' else 'one context'}",
        f"requests sent {load['requests']}, answered {answered}; by status: "
        + ", ".join(f"{k}: {v}" for k, v in report["by_status"].items()),
        f"front counted {report['rejected_by_front']} rejections (503); partial answers: "
        f"{report['partial_answers']}",
        f"{load['requests_per_s']:.2f} requests/s, {load['completions_per_s']:.2f} "
        "completions/s; latency of 200s: "
        + ", ".join(f"{p} {load[f'{p}_s']:.3f} s" if load[f"{p}_s"] is not None
                    else f"{p} -" for p in ("p50", "p95", "p99")),
    ]
    for key, how in (("engine_ceiling", "one sample at a time"),
                     ("engine_ceiling_batched", "in batches of {rows} samples")):
        if (ceiling := report.get(key)) is not None:
            lines.append(
                f"the engine alone ({ceiling['processes']} in-process models, no HTTP, "
                f"{ceiling['seconds']:g} s), {how.format(rows=ceiling['rows'])}: "
                f"{ceiling['completions_per_s']:.2f} completions/s; the soak reached "
                f"{load['completions_per_s'] / ceiling['completions_per_s']:.0%} of it")
    lines.append("memory (RSS) at start -> end:")
    for name, before in sorted(memory["start_bytes"].items()):
        after = memory["end_bytes"].get(name)
        change = memory["per_process_percent"].get(name)
        lines.append(f"  {name:<28} {before / MiB:8.1f} MiB -> "
                     + (f"{after / MiB:8.1f} MiB ({change:+.2f}%)" if after else "gone"))
    lines.append(f"  largest growth {memory['max_percent']:+.2f}%, all processes "
                 f"{memory['total_percent']:+.2f}%")
    lines.append("PASSED" if report["passed"] else
                 "FAILED: " + "; ".join(report["problems"]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", help="the pool to soak (default: the layout's first)")
    parser.add_argument("--clients", type=int, default=16,
                        help="concurrent clients (default 16: past the default front's "
                             "bounds, so some get 503)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="seconds of load before memory is first taken (default 15)")
    parser.add_argument("--think", type=float, default=0.0,
                        help="seconds a client waits between requests (default 0)")
    parser.add_argument("--n-samples", type=int, default=3)
    parser.add_argument("--length", type=int, help="new tokens (default: the layout's)")
    parser.add_argument("--max-growth", type=float, default=5.0,
                        help="largest memory growth of any process, percent (default 5)")
    parser.add_argument("--ceiling", type=float, default=0.0, metavar="SECONDS",
                        help="first run the pool's engine alone, one in-process model per "
                             "slot generating the same request back to back, for about "
                             "this long (and as long again in batches of the pool's "
                             "batch, if it batches): the completions/s the tiers are read "
                             "against (CPU pools; default 0, not run)")
    parser.add_argument("--contexts", choices=("same", "own"), default="same",
                        help="same: every client sends one context; own: each its own, of "
                             "a length of its own (as editors' texts are), so samples of "
                             "different clients share a worker's batch only when their "
                             "prompts are near in length")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--log", type=Path, help="the tiers' log (default: a temp file)")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace, layout: Layout) -> int:
    """``fanout soak``: soak, print the books, exit 1 when they do not balance."""
    pool = args.pool or layout.default_pool.name
    if pool not in layout.pools:
        print(f"error: no pool {pool!r} in {layout.source}", file=sys.stderr)
        return 2
    if (args.clients < 1 or args.duration <= 0 or args.warmup < 0 or args.think < 0
            or args.ceiling < 0):
        print("error: --clients and --duration must be positive, --warmup, --think and "
              "--ceiling not negative", file=sys.stderr)
        return 2
    if args.ceiling and any(slot.is_cuda for slot in layout.pools[pool].slots):
        print("error: --ceiling measures CPU pools only", file=sys.stderr)
        return 2
    if not 1 <= args.n_samples <= layout.front.max_samples:
        print(f"error: --n-samples must be 1..{layout.front.max_samples}", file=sys.stderr)
        return 2
    if args.length is not None and not 1 <= args.length <= layout.limits.length:
        print(f"error: --length must be 1..{layout.limits.length}", file=sys.stderr)
        return 2
    os.environ.pop(FRONT_BIND_ENV, None)  # the soak's front binds a free port
    signal.signal(signal.SIGTERM, _interrupt)  # stop the tiers on kill -TERM as on Ctrl-C
    settings = Settings(pool=pool, clients=args.clients, duration=args.duration,
                        warmup=args.warmup, think=args.think, n_samples=args.n_samples,
                        length=args.length or layout.defaults.length,
                        max_growth_percent=args.max_growth, ceiling_seconds=args.ceiling,
                        contexts=args.contexts)
    log_path = args.log or Path(tempfile.mkstemp(prefix="fanout-soak-", suffix=".log")[1])
    print(f"tiers' log: {log_path}", flush=True)
    try:
        report = soak(layout, settings, log_path)
    except KeyboardInterrupt:
        print("interrupted: every tier is stopped", file=sys.stderr)
        return 130
    print(report_text(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if report["passed"] else 1

