"""The CTranslate2 engine: a converted model (``fanout.convert``) decoded by CTranslate2.

A lean worker: it imports neither torch nor transformers; the ``tokenizers`` library reads
the ``tokenizer.json`` saved beside the conversion. Loaded inside a worker after fork,
like the transformers engine.

Seeds: CTranslate2 seeds each decoding thread's random generator once, when the thread
first samples (``set_random_seed`` cannot reseed it: OpenNMT/CTranslate2#1757). A sample
asked for with a seed therefore runs on a fresh generator built for it, whose thread has
not sampled yet (tens of milliseconds for the shipped models, more for larger ones); an
unseeded one runs on the worker's long-lived generator and reports no seed, since none
could replay it. Greedy decoding draws nothing and runs on the long-lived generator.

No logits hook: CTranslate2 (4.8) takes no logits processor from Python. A ``logit_bias``
of bans only is native (``suppress_sequences``), as are echo and a non-streamed answer's
log-probabilities. Penalties, any other bias, and a stream that reports log-probabilities as it goes
are sampled by the worker (``worker_api.engines.stepwise``): one ``generate_batch`` step
per token over the whole sequence so far (CTranslate2 keeps no cache between calls, so
each step re-reads it) and a draw in numpy. Its cost, measured on the shipped small model
(int8, one thread, 20 tokens): 12 ms native against 35 ms stepped after a 7-token
context, 17 ms against 103 ms after 200 tokens; top_p below 1 sorts the vocabulary at
every step (about 100 ms either way). Such a sample is drawn from numpy's generator,
seeded like any other, so it replays (and reports its seed even unseeded), but it is not
the sample CTranslate2 would have drawn for that seed. Log-probabilities of a non-streamed
answer come from one ``forward_batch`` over prompt and completion after generation (27 ms
against 12 ms for the same 20 tokens with logprobs=5); it returns every position's row, so
a window-long prompt holds window x vocabulary floats for a moment (200 MB for GPT-2's
1024 x 50257).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Hashable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ctranslate2
from tokenizers import Tokenizer

from fanout.convert import MANIFEST, read_manifest
from fanout.layout import Model
from fanout.model_files import ModelLoadError
from fanout.protocol import GenerationParams
from worker_api import rounds
from worker_api.engines.base import Engine, bans, is_greedy, reshapes_logits
from worker_api.engines.logprobs import Scored

if TYPE_CHECKING:
    from worker_api.engines.stepwise import Logits

# How far a batch's prompt lengths may differ (tokens): each token of difference costs the
# batch about one decoding step (_near_lengths). Two rows of the small model, 20 tokens
# each: 11.4 ms for equal prompts, 14.7 ms eight tokens apart, 17.3 ms sixteen apart,
# against 17.4 ms one after the other (docs/BENCHMARKS.md, 2026-12-05 evening).
PROMPT_SPREAD = 8

# numpy (and worker_api.engines.stepwise, which needs it) is imported by the requests that
# use it (logprobs, penalties, a bias other than a ban): a worker that serves plain
# completions stays 11 MiB smaller.


class CTranslate2Engine(Engine):
    name = "ctranslate2"

    def __init__(self, spec: Model, converted: Path, device: str = "cpu",
                 quantization: str = "int8", threads: int = 1) -> None:
        started = time.perf_counter()
        if not (converted / MANIFEST).is_file():
            raise ModelLoadError(f"{converted} holds no CTranslate2 conversion of "
                                 f"{spec.source}; run `fanout convert`")
        self.spec, self.converted, self.quantization = spec, converted, quantization
        self.manifest = read_manifest(converted)
        kind, _, index = device.partition(":")
        self.options: dict[str, Any] = {
            "device": kind, "device_index": int(index or 0), "compute_type": quantization,
            # One request at a time per worker: one decoding thread, `threads` for its math.
            "inter_threads": 1, "intra_threads": threads}
        self.tokenizer = Tokenizer.from_file(str(converted / "tokenizer" / "tokenizer.json"))
        self.window = int(self.manifest["window"])
        self.eos_token_id = int(self.manifest["eos_token_id"])
        self.eos_token = self.tokenizer.id_to_token(self.eos_token_id)
        # The converted model's own vocabulary: a token string for every logit.
        self.vocabulary: list[str] = json.loads((converted / "vocabulary.json").read_text())
        self.vocab_size = len(self.vocabulary)
        self.generator = self._unseeded_generator()
        self.load_seconds = time.perf_counter() - started

    def _unseeded_generator(self) -> ctranslate2.Generator:
        """The long-lived generator, its thread's random generator seeded from the OS now,
        by one sampled token: were it left to its first request, it would take whatever
        seed a seeded request had set last, the same in every worker."""
        ctranslate2.set_random_seed(secrets.randbits(32))
        generator = self._new_generator()
        generator.generate_batch([[self.eos_token]], max_length=1, sampling_topk=0,
                                 include_prompt_in_result=False)
        return generator

    def _new_generator(self) -> ctranslate2.Generator:
        return ctranslate2.Generator(str(self.converted), **self.options)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def detokenize(self, ids: list[int], special: bool = False) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=not special))

    def score(self, ids: list[int], start: int, top: int) -> list[Scored]:
        from worker_api.engines.stepwise import scored
        # Position i's log-probabilities are those of the token at i + 1.
        rows = _numpy(self.generator.forward_batch([ids[:-1]], return_log_probs=True))[0]
        return [scored(rows[i - 1], ids[i], top) for i in range(start, len(ids))]

    def sample(self, params: GenerationParams, context: list[int], seed: int | None,
               scores: list[Scored] | None = None) -> tuple[Iterator[int], int | None]:
        if scores is not None or reshapes_logits(params):
            from worker_api.engines.stepwise import sample_steps
            steps = sample_steps(self._next_logits, context, params, seed or 0,
                                 self.eos_token_id, self.vocab_size, scores)
            return steps, seed
        generator, seed = self._generator(params, seed)
        steps = generator.generate_tokens(self._tokens(context), **self._decoding(params))
        return _tokens(steps, self.eos_token_id, params.length), seed

    def sample_each(self, params: GenerationParams, context: list[int], seed: int | None,
                    take: Callable[[int], bool]) -> int | None:
        """One ``generate_batch`` whose callback hands each token over. ``generate_tokens``
        (``sample``) runs that same call in a thread of its own and passes every token
        through a queue to the caller: two threads taking turns per token. For the small
        model, 4 to 7% of a sample alone, 8 to 21% of three at once on two cores
        (docs/BENCHMARKS.md, 2026-12-05).

        In a round of requests the worker took together (``worker_api.rounds``), the
        samples that decode alike share that call, one batch row each. A seeded sample
        runs alone, on a generator of its own (module docstring)."""
        if reshapes_logits(params):
            return super().sample_each(params, context, seed, take)
        generator, seed = self._generator(params, seed)
        sample = _Sample(self._tokens(context), take, self._decoding(params))
        seat = rounds.current()
        if seat is None or generator is not self.generator:
            rounds.leave()
            self._decode(generator, [sample])
        else:
            seat.gather(sample.key, sample, partial(self._decode, generator))
            seat.rows = sample.rows
        sample.finish(self.eos_token_id)
        return seed

    @staticmethod
    def _decode(generator: ctranslate2.Generator, samples: list[_Sample]) -> None:
        """Decode ``samples`` (alike but for their lengths), as few batches as prompts of
        near lengths make; each row stops when its own callback says so."""
        for batch in _near_lengths(samples):
            options = {**batch[0].options,
                       "max_length": max(sample.options["max_length"] for sample in batch)}

            # Called by CTranslate2's decoding thread; ``batch`` bound now, not at the call.
            def on_step(step: Any, batch: list[_Sample] = batch) -> bool:
                return batch[step.batch_id].step(step.token_id)

            for sample in batch:
                sample.rows = len(batch)
            try:
                generator.generate_batch([sample.tokens for sample in batch],
                                         callback=on_step, beam_size=1,
                                         include_prompt_in_result=False, **options)
            finally:
                # CTranslate2's decoding thread may drop its copy of ``on_step`` after this
                # call returns: were it the last reference to a sample (and through its
                # ``take`` to the engine), the engine would be freed on that thread, whose
                # generator cannot join itself (the process aborts). It keeps nothing.
                batch.clear()

    def _generator(self, params: GenerationParams,
                   seed: int | None) -> tuple[ctranslate2.Generator, int | None]:
        """The generator a sample runs on, and the seed it reports (see the module
        docstring)."""
        greedy = is_greedy(params)
        if greedy or params.seed is None:
            return self.generator, (seed if greedy else None)
        ctranslate2.set_random_seed(params.seed % 2**32)  # its seed is 32 bits
        return self._new_generator(), seed

    def _decoding(self, params: GenerationParams) -> dict[str, Any]:
        """CTranslate2's decoding options for ``params`` (bans native, as suppressed
        sequences; penalties and other biases are sampled step by step)."""
        greedy = is_greedy(params)
        banned = bans(params)
        return {
            "max_length": params.length, "min_length": params.min_tokens,
            "sampling_topk": 1 if greedy else params.top_k,
            "sampling_topp": 1.0 if greedy else params.top_p,
            "sampling_temperature": 1.0 if greedy else params.temperature,
            "suppress_sequences": [self._tokens([t]) for t in banned] if banned else None,
            "end_token": self.eos_token,
        }

    def _tokens(self, ids: list[int]) -> list[str]:
        return [self.vocabulary[i] for i in ids]

    def _next_logits(self, ids: list[int]) -> Logits:
        """The raw logits after ``ids``: one step of CTranslate2's own decoder, which
        reads the sequence and projects its last position only."""
        result = self.generator.generate_batch(
            [self._tokens(ids)], max_length=1, sampling_topk=1, return_logits_vocab=True,
            include_prompt_in_result=False)[0]
        return _numpy(result.logits[0][0])  # the first hypothesis' first step

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.spec.source,
            "model_type": self.manifest["model_type"],
            "quantization": self.quantization,
            "parameters": self.manifest["parameters"],
            "converted": str(self.converted),
            "ctranslate2": ctranslate2.__version__,
            "threads": self.options["intra_threads"],
        }


class _Sample:
    """One row of a decoding: its prompt, options, and the caller's ``take``."""

    def __init__(self, tokens: list[str], take: Callable[[int], bool],
                 options: dict[str, Any]) -> None:
        self.tokens, self.take, self.options = tokens, take, options
        self.count, self.stopped = 0, False
        self.failed: BaseException | None = None
        self.rows = 1  # the samples decoded in one batch with it

    @property
    def key(self) -> Hashable:
        """Samples with equal keys may share a batch: every option but the length to
        generate, and one-token prompts only with one another (``_near_lengths``)."""
        return (len(self.tokens) == 1, *sorted((name, _frozen(value))
                                               for name, value in self.options.items()
                                               if name != "max_length"))

    def step(self, token: int) -> bool:
        self.count += 1
        try:
            self.stopped = self.take(token)
        except BaseException as error:  # CTranslate2 would swallow it: stop, raise later
            self.failed = error
            self.stopped = True
        return self.stopped

    def finish(self, eos_token_id: int) -> None:
        """After decoding: raise what ``take`` raised; hand over the end token where the
        row ended on it (CTranslate2 does not return it)."""
        if self.failed is not None:
            raise self.failed
        if not self.stopped and self.count < self.options["max_length"]:
            self.take(eos_token_id)


def _near_lengths(samples: list[_Sample]) -> list[list[_Sample]]:
    """``samples`` in batches whose prompt lengths differ by at most ``PROMPT_SPREAD``.

    CTranslate2 feeds a batch's prompts at once up to the shortest, then the rest of each
    longer one a token per step, beside the shorter rows' sampling: each row still
    decodes as it would alone (its callback starts after its own prompt), but every
    such step costs the whole batch a step. A batch whose shortest prompt is one token
    long is the exception: the longer rows' prompt tokens come back as if sampled, so
    ``_Sample.key`` keeps one-token prompts apart."""
    batches: list[list[_Sample]] = []
    for sample in sorted(samples, key=lambda s: len(s.tokens)):
        if batches and len(sample.tokens) - len(batches[-1][0].tokens) <= PROMPT_SPREAD:
            batches[-1].append(sample)
        else:
            batches.append([sample])
    return batches


def _frozen(value: Any) -> Hashable:
    """``value`` (a decoding option: a number, a string, None, nested lists) hashable."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _numpy(logits: ctranslate2.StorageView) -> Logits:
    """A CTranslate2 result as float32 numpy, wherever it was computed and in what type."""
    import numpy as np
    if logits.device != "cpu":
        logits = logits.to_device(ctranslate2.Device.cpu)
    if logits.dtype != ctranslate2.DataType.float32:
        logits = logits.to(ctranslate2.DataType.float32)
    return np.asarray(logits)


def _tokens(steps: Iterator[Any], eos_token_id: int, length: int) -> Iterator[int]:
    """The step results' token ids; CTranslate2 does not return the end token, so one
    that stops short of ``length`` is followed by it here, as transformers hands it over."""
    count = 0
    try:
        for step in steps:
            count += 1
            yield step.token_id
        if count < length:
            yield eos_token_id
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()  # CTranslate2 stops decoding at its next step
