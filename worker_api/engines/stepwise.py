"""Sampling one token at a time from logits the worker holds, for engines with no logits hook.

CTranslate2 decodes inside its own loop, where nothing of ours can change a logit. So a
request whose penalties or ``logit_bias`` must reshape the logits, or whose stream wants
each token's log-probabilities as it goes, is sampled here instead: the engine hands the
next position's raw logits for the sequence so far (``next_logits``), and this module
applies OpenAI's penalties and bias, holds off the end of text for ``min_tokens``, and
draws as generate() would (temperature, then top-k, then top-p) from a
``numpy.random.Generator`` built from the seed, so a seed replays its sample.

Torch-free, numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from fanout.protocol import GenerationParams
from worker_api.engines.base import BAN_BIAS, is_greedy
from worker_api.engines.logprobs import Scored

Logits = npt.NDArray[np.float32]


def log_softmax(logits: Logits) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - np.max(logits)
    return shifted - np.log(np.sum(np.exp(shifted)))


def scored(logprobs: npt.NDArray[np.floating], token: int, top: int) -> Scored:
    """The figures of one position: ``token``'s log-probability and the ``top`` best."""
    best = np.argpartition(-logprobs, top)[:top] if top else np.empty(0, dtype=np.intp)
    best = best[np.argsort(-logprobs[best], kind="stable")]
    return Scored(float(logprobs[token]),
                  tuple((int(i), float(logprobs[i])) for i in best))


def sample_steps(next_logits: Callable[[list[int]], Logits], context: list[int],
                 params: GenerationParams, seed: int, eos_token_id: int, vocab_size: int,
                 scores: list[Scored] | None = None) -> Iterator[int]:
    """Token ids after ``context`` until the end of text or ``params.length``; with
    ``scores``, each token's figures under the raw logits are appended before it goes."""
    rng = np.random.default_rng(seed)
    bias = np.zeros(vocab_size, dtype=np.float32)
    for token, value in params.logit_bias:
        bias[token] = -np.inf if value <= BAN_BIAS else value
    counts = np.zeros(vocab_size, dtype=np.float32)
    ids = list(context)
    for step in range(params.length):
        logits = next_logits(ids)
        adjusted = (logits - counts * params.frequency_penalty
                    - (counts > 0) * params.presence_penalty + bias)
        if step < params.min_tokens:
            adjusted[eos_token_id] = -np.inf
        token = draw(adjusted, params, rng)
        if scores is not None:
            scores.append(scored(log_softmax(logits), token, params.logprobs or 0))
        yield token
        if token == eos_token_id:
            return
        ids.append(token)
        counts[token] += 1


def draw(logits: Logits, params: GenerationParams, rng: np.random.Generator) -> int:
    """One token from ``logits``: the likeliest at temperature 0, else sampled from the
    temperature-scaled logits cut to the ``top_k`` best, then to the fewest best whose
    probability reaches ``top_p``."""
    if is_greedy(params):
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    candidates = np.flatnonzero(np.isfinite(scaled))  # banned tokens are out
    if 0 < params.top_k < len(candidates):
        candidates = candidates[np.argpartition(-scaled[candidates], params.top_k - 1)
                                [:params.top_k]]
    if params.top_p < 1.0:  # the nucleus needs them best first (a sort: milliseconds)
        candidates = candidates[np.argsort(-scaled[candidates])]
    weights = np.exp(scaled[candidates] - np.max(scaled[candidates]))
    probabilities = weights / weights.sum()
    if params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probabilities), params.top_p)) + 1
        candidates, probabilities = candidates[:keep], probabilities[:keep]
        probabilities = probabilities / probabilities.sum()
    return int(rng.choice(candidates, p=probabilities))
