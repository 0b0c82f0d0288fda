"""The transformers engine: ``generate()`` of a transformers causal LM on one device.

The reference engine, and the one for any model CTranslate2 cannot convert. Penalties and
``logit_bias`` are a logits processor; log-probabilities come from a scoring pass (one
forward over prompt and completion) or, in a stream, from a processor that keeps each
step's raw logits, ahead of every other processor. This and
``worker_api.engines.ctranslate2_engine`` are the only worker modules that import an
inference library; it is imported inside a worker after fork, once ``post_fork`` has
pinned the device, so the gunicorn master never initialises CUDA.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from fanout.layout import Model
from fanout.model_files import ModelLoadError, model_folder, weights_files
from fanout.protocol import GenerationParams
from worker_api.engines.base import BAN_BIAS, Engine, is_greedy, reshapes_logits
from worker_api.engines.logprobs import Scored

# Load bars are noise in a server's log; the load time is logged once instead.
hf_logging.disable_progress_bar()

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_END = object()  # what the generation thread queues after its last token


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` means half precision where the device does it fast, float32 elsewhere."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, spec: Model, device: str = "cpu", dtype: str = "auto") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        started = time.perf_counter()
        folder = model_folder(spec)
        safetensors = weights_files(folder, spec.allow_pickle)[0].suffix == ".safetensors"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
                folder, dtype=self.dtype, local_files_only=True, use_safetensors=safetensors)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load model {spec.source!r} from {folder}: "
                                 f"{exc}") from exc
        # transformers types `to` through a decorator mypy misreads; it is nn.Module.to.
        self.model.to(self.device).eval()  # type: ignore[arg-type]
        self.window = int(self.model.config.n_positions)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        self.load_seconds = time.perf_counter() - started

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def detokenize(self, ids: list[int], special: bool = False) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=not special))

    @torch.no_grad()
    def score(self, ids: list[int], start: int, top: int) -> list[Scored]:
        # Logits of the positions scored only: a completion's, not the whole prompt's.
        logits = self.model(torch.tensor([ids], device=self.device),
                            logits_to_keep=len(ids) - start + 1).logits
        rows = torch.log_softmax(logits[0, :-1].float(), dim=-1)
        return _scored(rows, ids[start:], top)

    def sample(self, params: GenerationParams, context: list[int], seed: int | None,
               scores: list[Scored] | None = None) -> tuple[Iterator[int], int | None]:
        """``generate()`` runs on a thread and hands each token over as it is chosen; once
        the consumer closes the iterator, a stopping criterion ends it at the next token."""
        stop = threading.Event()
        tokens: queue.Queue[Any] = queue.Queue()
        input_ids = torch.tensor([context], device=self.device)
        # Custom processors run before generate()'s warpers (temperature, top-k, top-p);
        # the capture goes first, so that it sees the logits as the model gave them.
        capture = _Capture(params.logprobs or 0) if scores is not None else None
        processors = LogitsProcessorList([capture] if capture else [])
        if params.min_tokens:
            processors.append(MinNewTokensLengthLogitsProcessor(
                len(context), params.min_tokens, self.eos_token_id, str(self.device)))
        if params.logit_bias or reshapes_logits(params):
            processors.append(_Penalties(params, len(context), self.vocab_size, self.device))
        sampling: dict[str, Any] = (
            {"do_sample": False} if is_greedy(params) else
            {"do_sample": True, "temperature": params.temperature, "top_k": params.top_k,
             "top_p": params.top_p})

        @torch.no_grad()
        def run() -> None:
            try:
                # Sync workers run one request at a time: the global RNG is safe to seed.
                torch.manual_seed(seed if seed is not None else 0)
                self.model.generate(  # type: ignore[operator]
                    input_ids, attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=params.length, logits_processor=processors,
                    max_time=params.max_time, pad_token_id=self.eos_token_id,
                    eos_token_id=self.eos_token_id, streamer=_Handover(tokens, capture),
                    stopping_criteria=StoppingCriteriaList([_Stopped(stop)]), **sampling)
            except BaseException as error:  # re-raised by the consumer, in its thread
                tokens.put(error)
            tokens.put(_END)

        def handed_over() -> Iterator[int]:
            thread = threading.Thread(target=run, name="generate", daemon=True)
            thread.start()
            try:
                while (item := tokens.get()) is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    token, scored = item
                    if scores is not None:
                        scores.append(scored)
                    yield token
            finally:
                stop.set()
                thread.join()
        return handed_over(), seed

    def memory(self) -> dict[str, int]:
        figures = super().memory()
        if self.device.type == "cuda":
            figures["cuda_allocated_bytes"] = torch.cuda.memory_allocated(self.device)
            figures["cuda_reserved_bytes"] = torch.cuda.memory_reserved(self.device)
        return figures

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.spec.source,
            "model_type": self.model.config.model_type,
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameters": self.parameters,
            "torch_threads": torch.get_num_threads(),
        }


class _Capture(LogitsProcessor):
    """Keeps the step's raw log-softmax until its token is chosen (see ``_Handover``)."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.row: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        self.row = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def scored(self, token: int) -> Scored:
        assert self.row is not None
        return _scored(self.row[None], [token], self.top)[0]


class _Penalties(LogitsProcessor):
    """OpenAI's penalties and ``logit_bias``: a token's logit loses frequency_penalty per
    time it was sampled in this completion and presence_penalty once it was, and gains its
    bias (``BAN_BIAS``: -inf)."""

    def __init__(self, params: GenerationParams, prompt_length: int, vocab_size: int,
                 device: torch.device) -> None:
        self.presence, self.frequency = params.presence_penalty, params.frequency_penalty
        self.prompt_length, self.vocab_size = prompt_length, vocab_size
        self.bias = torch.zeros(vocab_size, device=device)
        for token, bias in params.logit_bias:
            self.bias[token] = -math.inf if bias <= BAN_BIAS else bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.Tensor:
        counts = torch.bincount(input_ids[0, self.prompt_length:], minlength=self.vocab_size)
        penalty = counts * self.frequency + (counts > 0) * self.presence
        return scores - penalty.to(scores.dtype) + self.bias.to(scores.dtype)


def _scored(rows: torch.Tensor, chosen: list[int], top: int) -> list[Scored]:
    """``Scored`` per row of log-probabilities, for the token chosen at each."""
    picked = rows.gather(1, torch.tensor(chosen, device=rows.device)[:, None])[:, 0].tolist()
    values, indices = rows.topk(top, dim=-1) if top else (rows[:, :0], rows[:, :0].long())
    return [Scored(logprob, tuple(zip(ids, logprobs, strict=True)))
            for logprob, ids, logprobs in zip(picked, indices.tolist(), values.tolist(),
                                              strict=True)]


class _Handover(BaseStreamer):
    """Queues each chosen token for the consumer (the first put is the prompt: skipped),
    with its figures when a ``_Capture`` keeps them."""

    def __init__(self, tokens: queue.Queue[Any], capture: _Capture | None) -> None:
        self.tokens, self.capture, self.prompt_seen = tokens, capture, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        token = int(value.reshape(-1)[0])
        self.tokens.put((token, self.capture.scored(token) if self.capture else None))

    def end(self) -> None:
        pass


class _Stopped(StoppingCriteria):
    """Stops generation once the consumer has what it needs, or nobody waits any more."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool,
                          device=input_ids.device)


def set_cpu_threads(threads: int) -> None:
    """Bound torch's intra-op pool so the workers sharing a host don't oversubscribe it."""
    torch.set_num_threads(threads)
