"""HTTP handlers of the front: autocomplete (and its body's schema), models, health.

The fan-out does the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any, Protocol

import falcon

from fanout.http import read_json
from fanout.layout import GenerationDefaults, GenerationLimits, Layout, pool_name
from fanout.params import Fields, ParamError, read_distinct, read_generation
from fanout.peer import client_gone_check
from frontend_api.admission import Admission
from frontend_api.samples import AutocompleteRequest, Gathered, StreamEvent


class Fanout(Protocol):
    """What the resources need from the fan-out client (``frontend_api.fanout.FanoutClient``)."""

    def complete(self, request: AutocompleteRequest,
                 client_gone: Callable[[], bool]) -> Gathered: ...

    def stream(self, request: AutocompleteRequest) -> Generator[StreamEvent, None, None]: ...

    def health(self) -> dict[str, dict[str, Any]]: ...

    def ask(self, pool_name: str, path: str, body: dict[str, Any]) -> dict[str, Any]: ...


# POST /autocomplete's body: the generation fields, and which pool and how many samples.
AUTOCOMPLETE_FIELDS = frozenset({"context", "length", "temperature", "top_k", "top_p",
                                 "max_time", "max_tokens", "seed", "min_tokens",
                                 "stop_at", "model_size", "n_samples", "distinct",
                                 "exclude"})


def parse_autocomplete(body: Any, defaults: GenerationDefaults, limits: GenerationLimits,
                       pools: Mapping[str, object], max_samples: int,
                       path_pool: str | None = None) -> AutocompleteRequest:
    """Check a front ``/autocomplete`` body; an unknown pool is a 404, as for a missing page.

    ``pools`` maps every name a request may use (``Layout.names``: pools, then aliases);
    ``path_pool`` is the pool ``/autocomplete/<name>`` chose, which a ``model_size`` in
    the body may repeat, by any of its names, but not contradict.
    """
    fields = Fields(body, AUTOCOMPLETE_FIELDS)
    asked = fields.string("model_size", default=path_pool or next(iter(pools)))
    model_size = pool_name(pools, asked)
    if model_size not in pools:
        raise ParamError("model_size", f"unknown model {model_size!r}; "
                                       f"choose one of {', '.join(pools)}", status=404)
    if path_pool is not None and model_size != path_pool:
        raise ParamError("model_size", f"{asked!r} is not the model the path names "
                                       f"({path_pool}); leave model_size out or repeat it")
    n_samples = fields.integer("n_samples", defaults.n_samples, 1, max_samples)
    params = read_generation(fields, defaults, limits, stop_at=defaults.stop_at)
    distinct, exclude = read_distinct(fields)
    return AutocompleteRequest(model_size, n_samples, params, distinct=distinct,
                               exclude=exclude)


class Autocomplete:
    """``POST /autocomplete``: N completions of a context, Write With Transformer style."""

    def __init__(self, fanout: Fanout, layout: Layout, admission: Admission) -> None:
        self.fanout, self.layout, self.admission = fanout, layout, admission

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.answer(req, resp, None)

    def on_post_named(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        """``POST /autocomplete/<model>``: Write With Transformer's path (a pool or an alias)."""
        pool = self.layout.pool_named(model)
        if pool is None:
            raise falcon.HTTPNotFound(title="Not found", description=(
                f"no model {model!r} here; choose one of {', '.join(self.layout.names)}"))
        self.answer(req, resp, pool.name)

    def answer(self, req: falcon.Request, resp: falcon.Response, path_pool: str | None) -> None:
        started = time.monotonic()
        front, layout = self.layout.front, self.layout
        request = parse_autocomplete(read_json(req, front.max_body_bytes), layout.defaults,
                                     layout.limits, layout.names, front.max_samples,
                                     path_pool)
        with self.admission.admit(request.model_size, request.n_samples,
                                  getattr(req.context, "api_key", None)):
            gathered = self.fanout.complete(request, client_gone_check(req.env))
        resp.media = {
            "sentences": [
                {"value": s.text, "time": round(s.round_trip, 4), "tokens": s.tokens,
                 "finish_reason": s.finish_reason, "seed": s.seed, "worker": s.worker}
                for s in gathered.samples
            ],
            "model_size": request.model_size,
            "time": round(time.monotonic() - started, 4),
            # Some samples failed by the deadline (a worker hung or died): the rest are
            # worth more to an editor than an error.
            "partial": bool(gathered.failed),
            "failed": [{"index": f.index, "status": f.status, "reason": f.reason}
                       for f in gathered.failed],
            "resampled": gathered.resampled,  # repeats sent again (distinct)
        }


class Models:
    """``GET /models``: the pools a request can choose with ``model_size``."""

    def __init__(self, layout: Layout) -> None:
        self.body = {
            "default": layout.default_pool.name,
            "models": [
                # dtype: the transformers dtype, or the CTranslate2 quantization
                {"name": pool.name, "model": pool.model.name, "engine": pool.engine,
                 "dtype": pool.precision,
                 "workers": pool.total_workers, "hosts": len(pool.urls),
                 "devices": list(pool.devices), "aliases": list(pool.aliases)}
                for pool in layout.pools.values()
            ],
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.body


class Health:
    """``GET /health``: 200 while every pool can serve, 503 naming the pools that cannot."""

    def __init__(self, fanout: Fanout, admission: Admission) -> None:
        self.fanout, self.admission = fanout, admission

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        pools = self.fanout.health()
        down = sorted(name for name, pool in pools.items() if pool["status"] == "down")
        healthy = all(pool["status"] == "ok" for pool in pools.values())
        resp.media = {"status": "ok" if healthy else "down" if down else "degraded",
                      "pools": pools, "load": self.admission.snapshot()}
        if down:
            resp.status = falcon.HTTP_503


class EditorPage:
    """``GET /``: the web editor (its script and styles are served under ``/static``)."""

    def __init__(self, page: Path) -> None:
        self.html = page.read_text(encoding="utf-8")  # read once, at start-up

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = self.html
