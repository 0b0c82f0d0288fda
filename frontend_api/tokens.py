"""``POST /tokenize`` and ``POST /detokenize``: a pool's tokenizer, in vLLM's shapes.

The front holds no tokenizer (it loads no model); one of the pool's workers answers.
Counting a prompt's tokens before sending it is what clients use these for, and each pool
may have its own tokenizer, so ``model`` names the pool.
"""

from __future__ import annotations

import falcon

from fanout.http import read_json
from fanout.layout import Layout
from fanout.params import parse_detokenize, parse_tokenize
from frontend_api.resources import Fanout


class Tokenize:
    """``{"model": pool, "prompt": text}`` -> ``{"tokens": [...], "count": n,
    "max_model_len": window}``."""

    def __init__(self, fanout: Fanout, layout: Layout) -> None:
        self.fanout, self.layout = fanout, layout

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        pool, text = parse_tokenize(read_json(req, self.layout.front.max_body_bytes),
                                    self.layout.pools)
        resp.media = self.fanout.ask(pool, "/tokenize", {"prompt": text})


class Detokenize:
    """``{"model": pool, "tokens": [...]}`` -> ``{"prompt": text}``."""

    def __init__(self, fanout: Fanout, layout: Layout) -> None:
        self.fanout, self.layout = fanout, layout

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        pool, tokens = parse_detokenize(read_json(req, self.layout.front.max_body_bytes),
                                        self.layout.pools)
        resp.media = self.fanout.ask(pool, "/detokenize", {"tokens": list(tokens)})
