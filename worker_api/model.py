"""Load one causal LM onto one device and generate from it.

This is the only module of the worker tier that imports torch and transformers. It is
imported inside a worker after fork, once ``post_fork`` has pinned the device, so the
gunicorn master never initialises CUDA.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)
from transformers.utils import logging as hf_logging

from fanout.layout import Model
from fanout.params import MAX_SEED, GenerationParams, ParamError

# Load bars are noise in a server's log; the load time is logged once instead.
hf_logging.disable_progress_bar()

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Dividing the logits by a temperature this small (1e-40, say) overflows them to inf and
# sampling fails on NaN probabilities; that close to 0 it is greedy decoding anyway.
MIN_SAMPLING_TEMPERATURE = 1e-6


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded; the message says what is missing."""


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish_reason: str  # "length", "stop" (end of text) or "time" (max_time ran out)
    time: float
    seed: int
    context_tokens: int


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` means half precision where the device does it fast, float32 elsewhere."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def model_folder(model: Model) -> Path:
    """The local folder to load: the layout's folder, or a hub id's snapshot in the cache.

    A worker never downloads: N workers booting at once would race for the same files,
    and a serving host may have no route out. Fetching is a separate, explicit step.
    """
    if model.path is not None:
        folder = model.path
    else:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(model.source, local_files_only=True))
        except LocalEntryNotFoundError:
            raise ModelLoadError(
                f"hub model {model.source!r} is not in the local cache "
                f"({constants.HF_HUB_CACHE}); fetch it into models/ with "
                f"`scripts/fetch_model.py {model.source}` on a host that can reach the hub, "
                "then point the pool's model at that folder") from None
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        missing.append("weights (*.safetensors)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        missing.append("tokenizer (tokenizer.json or vocab.json + merges.txt)")
    if missing:
        raise ModelLoadError(f"model folder {folder} lacks {', '.join(missing)}")
    return folder


def _weights_kwargs(folder: Path, allow_pickle: bool) -> dict[str, Any]:
    """Prefer safetensors; pickle weights only where the layout explicitly allows them."""
    if any(folder.glob("*.safetensors")):
        return {"use_safetensors": True}
    if not allow_pickle:
        raise ModelLoadError(
            f"{folder} holds only pickle weights (*.bin), which can run code when "
            "loaded; convert them to safetensors or set allow_pickle: true on the pool")
    return {"use_safetensors": False}


class LanguageModel:
    """A tokenizer and a causal LM on one device, ready to sample completions."""

    def __init__(self, spec: Model, device: str = "cpu", dtype: str = "auto") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        started = time.perf_counter()
        folder = model_folder(spec)
        weights = _weights_kwargs(folder, spec.allow_pickle)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
                folder, dtype=self.dtype, local_files_only=True, **weights)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load model {spec.source!r} from {folder}: "
                                 f"{exc}") from exc
        # transformers types `to` through a decorator mypy misreads; it is nn.Module.to.
        self.model.to(self.device).eval()  # type: ignore[arg-type]
        self.window = int(self.model.config.n_positions)
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        self.load_seconds = time.perf_counter() - started
        self.ready = False

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def warm_up(self) -> Completion:
        """One short generation proves the device works before the worker takes traffic."""
        done = self.generate(GenerationParams(context="Hello", length=2, temperature=1.0,
                                              top_k=0, top_p=1.0, max_time=60.0, seed=0))
        self.ready = True
        return done

    def context_ids(self, context: str, length: int, max_tokens: int | None) -> torch.Tensor:
        """Token ids to feed: the end of the context, short enough to leave room for ``length``."""
        if length >= self.window:
            raise ParamError("length", f"must be below the model's window of {self.window} "
                                       f"tokens, not {length}")
        room = self.window - length
        keep = room if max_tokens is None else min(room, max_tokens)
        ids = self.tokenizer(context, add_special_tokens=False).input_ids[-keep:]
        # GPT-2 starts from <|endoftext|> when there is no context to condition on.
        return torch.tensor([ids or [self.eos_token_id]], device=self.device)

    def stream(self, params: GenerationParams,
               abandoned: Callable[[], bool] | None = None) -> Iterator[str | Completion]:
        """The completion's text as it is generated, in pieces, then the Completion.

        Generation runs on a thread and hands text over through transformers' streamer.
        Text that could be the start of a stop sequence is held back until it is not, so
        the pieces always add up to the final text.
        """
        self.context_ids(params.context, params.length, params.max_tokens)  # errors first
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=True)
        finished: list[Completion] = []
        failed: list[BaseException] = []

        def run() -> None:
            try:
                finished.append(self.generate(params, abandoned, streamer))
            except BaseException as error:  # re-raised below, in the serving thread
                failed.append(error)
                streamer.end()
        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        hold = max((len(stop) for stop in params.stop), default=1) - 1
        text, sent = "", 0
        for piece in streamer:
            text += piece
            found = [at for at in (text.find(stop) for stop in params.stop) if at >= 0]
            end = min(found) if found else len(text) - hold
            if end > sent:
                yield text[sent:end]
                sent = end
        thread.join()
        if failed:
            raise failed[0]
        done = finished[0]
        if len(done.text) > sent and done.text.startswith(text[:sent]):
            yield done.text[sent:]
        yield done

    @torch.no_grad()
    def generate(self, params: GenerationParams, abandoned: Callable[[], bool] | None = None,
                 streamer: TextIteratorStreamer | None = None) -> Completion:
        """Sample ``params.length`` new tokens after the context (or fewer, on EOS or time-out).

        ``abandoned`` is asked after every token; once it says yes (the front stopped
        waiting), generation stops, so a dropped request frees its worker at once.
        ``streamer`` receives the tokens as they come (see ``stream``).
        """
        started = time.perf_counter()
        input_ids = self.context_ids(params.context, params.length, params.max_tokens)
        seed = params.seed if params.seed is not None else random.randint(0, MAX_SEED)
        torch.manual_seed(seed)  # sync workers run one request at a time: global RNG is safe
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": params.temperature, "top_k": params.top_k,
             "top_p": params.top_p}
            if params.temperature >= MIN_SAMPLING_TEMPERATURE else {"do_sample": False})
        if params.stop:  # transformers matches them across token boundaries
            sampling.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        output = self.model.generate(  # type: ignore[operator]
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=params.length,
            max_time=params.max_time,
            pad_token_id=self.eos_token_id,
            eos_token_id=self.eos_token_id,
            stopping_criteria=StoppingCriteriaList([_Abandoned(abandoned)] if abandoned else []),
            streamer=streamer,
            **sampling,
        )
        new_ids = output[0, input_ids.shape[1]:].tolist()
        if self.eos_token_id in new_ids:
            new_ids = new_ids[: new_ids.index(self.eos_token_id)]
            reason = "stop"
        elif len(new_ids) >= params.length:
            reason = "length"
        else:
            reason = "abandoned" if abandoned and abandoned() else "time"
        text = str(self.tokenizer.decode(new_ids, skip_special_tokens=True))
        tokens = len(new_ids)
        found = [at for at in (text.find(stop) for stop in params.stop) if at >= 0]
        if found:  # the text ends before the first stop sequence, which is not returned
            text, reason = text[:min(found)], "stop"
            tokens = len(self.tokenizer(text, add_special_tokens=False).input_ids)
        return Completion(text=text, tokens=tokens, finish_reason=reason,
                          time=time.perf_counter() - started, seed=seed,
                          context_tokens=int(input_ids.shape[1]))

    def memory(self) -> dict[str, int]:
        """Bytes in use: process RSS, plus the CUDA allocator's figures on a GPU."""
        figures = {"rss_bytes": psutil.Process(os.getpid()).memory_info().rss}
        if self.device.type == "cuda":
            figures["cuda_allocated_bytes"] = torch.cuda.memory_allocated(self.device)
            figures["cuda_reserved_bytes"] = torch.cuda.memory_reserved(self.device)
        return figures

    def info(self) -> dict[str, Any]:
        return {
            "model": self.spec.source,
            "model_type": self.model.config.model_type,
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameters": self.parameters,
            "window": self.window,
            "load_seconds": round(self.load_seconds, 3),
            "torch_threads": torch.get_num_threads(),
            "memory": self.memory(),
        }


class _Abandoned(StoppingCriteria):
    """Stops generation once nobody waits for it any more."""

    def __init__(self, abandoned: Callable[[], bool]) -> None:
        self.abandoned = abandoned

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.abandoned(), dtype=torch.bool,
                          device=input_ids.device)


def set_cpu_threads(threads: int) -> None:
    """Bound torch's intra-op pool so the workers sharing a host don't oversubscribe it."""
    torch.set_num_threads(threads)
