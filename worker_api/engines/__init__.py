"""The engines that generate inside a worker, behind one contract (``base.Engine``).

``load_engine`` imports the pool's engine only when asked, inside a worker after fork:
a CTranslate2 worker never imports torch, and the master imports neither library.
"""

from __future__ import annotations

import os
from pathlib import Path

from fanout.layout import Pool, Slot
from worker_api.engines.base import Engine

# Where the master put the pool's CTranslate2 conversion (fanout.convert.prepare).
CONVERTED_ENV = "FANOUT_CONVERTED_MODEL"


def load_engine(pool: Pool, slot: Slot, converted: Path | None = None) -> Engine:
    """The pool's model on the slot's device; post_fork has shown the worker only its
    slot's GPU, so that GPU is cuda:0 here."""
    device = "cuda:0" if slot.is_cuda else "cpu"
    if pool.engine == "ctranslate2":
        from worker_api.engines.ctranslate2_engine import CTranslate2Engine

        folder = converted or Path(os.environ[CONVERTED_ENV])
        return CTranslate2Engine(pool.model, folder, device, pool.quantization or "int8",
                                 slot.threads)
    from worker_api.engines.transformers_engine import TransformersEngine, set_cpu_threads

    set_cpu_threads(slot.threads)
    return TransformersEngine(pool.model, device, pool.dtype)
