"""``POST /tokenize`` and ``POST /detokenize``: a pool's tokenizer, in vLLM's shapes.

The front holds no tokenizer (it loads no model); one of the pool's workers answers.
Counting a prompt's tokens before sending it is what clients use these for, and each pool
may have its own tokenizer, so ``model`` names the pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import falcon

from fanout.http import read_json
from fanout.layout import Layout, pool_name
from fanout.params import MAX_CONTEXT_TOKENS, Fields, ParamError
from frontend_api.resources import Fanout


def parse_tokenize(body: Any, pools: Mapping[str, object]) -> tuple[str, str]:
    """A front ``POST /tokenize`` body (vLLM's): the pool and the text."""
    fields = Fields(body, frozenset({"model", "prompt", "add_special_tokens"}))
    fields.boolean("add_special_tokens", True)  # GPT-2 adds none either way
    text = fields.string("prompt")
    if len(text.encode("utf-8")) > MAX_CONTEXT_TOKENS:
        raise ParamError("prompt", f"is longer than {MAX_CONTEXT_TOKENS} bytes", status=413)
    return _pool(fields, pools), text


def parse_detokenize(body: Any, pools: Mapping[str, object]) -> tuple[str, tuple[int, ...]]:
    """A front ``POST /detokenize`` body (vLLM's): the pool and the token ids."""
    fields = Fields(body, frozenset({"model", "tokens"}))
    tokens = fields.token_ids("tokens")
    if tokens is None:
        raise ParamError("tokens", "is required")
    return _pool(fields, pools), tokens


def _pool(fields: Fields, pools: Mapping[str, object]) -> str:
    """``model``: a pool, the layout's first when left out."""
    model = pool_name(pools, fields.string("model", default=next(iter(pools))))
    if model not in pools:
        raise ParamError("model", f"the model {model!r} does not exist; choose one of "
                                  f"{', '.join(pools)}", status=404)
    return model


class Tokenize:
    """``{"model": pool, "prompt": text}`` -> ``{"tokens": [...], "count": n,
    "max_model_len": window}``."""

    def __init__(self, fanout: Fanout, layout: Layout) -> None:
        self.fanout, self.layout = fanout, layout

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        pool, text = parse_tokenize(read_json(req, self.layout.front.max_body_bytes),
                                    self.layout.names)
        resp.media = self.fanout.ask(pool, "/tokenize", {"prompt": text})


class Detokenize:
    """``{"model": pool, "tokens": [...]}`` -> ``{"prompt": text}``."""

    def __init__(self, fanout: Fanout, layout: Layout) -> None:
        self.fanout, self.layout = fanout, layout

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        pool, tokens = parse_detokenize(read_json(req, self.layout.front.max_body_bytes),
                                        self.layout.names)
        resp.media = self.fanout.ask(pool, "/detokenize", {"tokens": list(tokens)})
