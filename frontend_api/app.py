"""The front's WSGI app: ``create_app`` wires routes, ``get_app`` is what gunicorn calls."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import falcon

from fanout.http import FieldError, add_error_handlers
from fanout.layout import Layout, load_layout
from frontend_api import openai_api
from frontend_api.access import API_KEYS_ENV, ApiKeys, access_middleware, log_policy, read_api_keys
from frontend_api.admission import Admission
from frontend_api.errors import ClientGone, WorkerTierError
from frontend_api.events import Events
from frontend_api.fanout import FanoutClient
from frontend_api.forwarded import trusted_proxies
from frontend_api.metrics import FrontObserver, metrics_page
from frontend_api.openapi import OpenAPIDocument
from frontend_api.resources import Autocomplete, EditorPage, Fanout, Health, Models
from frontend_api.tokens import Detokenize, Tokenize

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger(__name__)


def worker_tier_error(req: falcon.Request, resp: falcon.Response, exc: WorkerTierError,
                      params: object) -> None:
    if exc.field is not None:
        raise FieldError(exc.status, exc.title, exc.description, exc.field)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    raise falcon.HTTPError(falcon.code_to_http_status(exc.status), title=exc.title,
                           description=exc.description, headers=headers)


def client_gone(req: falcon.Request, resp: falcon.Response, exc: ClientGone,
                params: object) -> None:
    # Nobody reads this answer; the status is for the access log (nginx's convention).
    log.info("client left before its samples were in: %s %s", req.method, req.path)
    raise falcon.HTTPError("499 Client Closed Request", title="Client closed request")


def create_app(layout: Layout, fanout: Fanout, api_keys: ApiKeys | None = None) -> falcon.App:
    # Shared with the observer: a request refused before routing (a 401) keeps its route.
    router = falcon.routing.CompiledRouter()
    app = falcon.App(router=router, middleware=[
        FrontObserver(router, static_prefixes=("/static/",),
                      trusted_proxies=trusted_proxies(layout)),
        *access_middleware(layout.front.cors_origins, api_keys or ApiKeys())])
    add_error_handlers(app)
    app.add_error_handler(WorkerTierError, worker_tier_error)
    app.add_error_handler(ClientGone, client_gone)
    admission = Admission(layout.front, layout.pools,
                          api_keys=len(api_keys.digests) if api_keys else 0)
    autocomplete = Autocomplete(fanout, layout, admission)
    app.add_route("/autocomplete", autocomplete)
    # Write With Transformer's path; an alias may hold '/', so the rest of the path is it.
    app.add_route("/autocomplete/{model:path}", autocomplete, suffix="named")
    app.add_route("/models", Models(layout))
    app.add_route("/events", Events(layout))
    app.add_route("/health", Health(fanout, admission))
    app.add_route("/openapi.json", OpenAPIDocument(layout))
    app.add_route("/metrics", metrics_page())
    app.add_route("/v1/completions", openai_api.Completions(fanout, layout, admission))
    models = openai_api.Models(layout)
    app.add_route("/v1/models", models)
    app.add_route("/v1/models/{model_id:path}", models, suffix="model")
    app.add_route("/tokenize", Tokenize(fanout, layout))
    app.add_route("/detokenize", Detokenize(fanout, layout))
    app.set_error_serializer(openai_api.serialize_front_error)
    app.add_route("/", EditorPage(STATIC / "index.html"))
    app.add_static_route("/static", str(STATIC))
    return app


def get_app() -> falcon.App:
    layout = load_layout()
    front = layout.front
    # Every front thread may be waiting on up to max_samples worker requests at once.
    client = FanoutClient(layout.pools, threads=front.threads * front.max_samples,
                          network_slack=front.network_slack,
                          host_check_seconds=front.host_check_seconds)
    api_keys = read_api_keys(os.environ.get(API_KEYS_ENV), front.api_keys_file)
    log_policy(front, api_keys)
    return create_app(layout, client, api_keys)
