"""The transformers engine: ``generate()`` of a transformers causal LM on one device.

The reference engine, and the one for any model CTranslate2 cannot convert. This and
``worker_api.engines.ctranslate2_engine`` are the only worker modules that import an
inference library; it is imported inside a worker after fork, once ``post_fork`` has
pinned the device, so the gunicorn master never initialises CUDA.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from fanout.layout import Model
from fanout.model_files import ModelLoadError, model_folder, weights_files
from fanout.params import GenerationParams
from worker_api.engines.base import Engine, is_greedy

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
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        self.load_seconds = time.perf_counter() - started

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def detokenize(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def sample(self, params: GenerationParams, context: list[int],
               seed: int | None) -> tuple[Iterator[int], int | None]:
        """``generate()`` runs on a thread and hands each token over as it is chosen; once
        the consumer closes the iterator, a stopping criterion ends it at the next token."""
        stop = threading.Event()
        tokens: queue.Queue[Any] = queue.Queue()
        input_ids = torch.tensor([context], device=self.device)
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
                    max_new_tokens=params.length, min_new_tokens=params.min_tokens or None,
                    max_time=params.max_time, pad_token_id=self.eos_token_id,
                    eos_token_id=self.eos_token_id, streamer=_Handover(tokens),
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
                    yield item
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


class _Handover(BaseStreamer):
    """Queues each chosen token for the consumer (the first put is the prompt: skipped)."""

    def __init__(self, tokens: queue.Queue[Any]) -> None:
        self.tokens, self.prompt_seen = tokens, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens.put(int(value.reshape(-1)[0]))

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
