"""One logging set-up for both tiers' gunicorn servers: gunicorn's lines and ours alike."""

from __future__ import annotations

from typing import Any

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def logging_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` mapping for gunicorn's ``logconfig_dict`` setting."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain",
               "stream": "ext://sys.stderr"}
    ours = {"level": level.upper(), "handlers": ["stderr"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": FORMAT}},
        "handlers": {"stderr": handler},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": ours,
            "gunicorn.access": {**ours, "level": "WARNING"},
            "fanout": ours,
            "frontend_api": ours,
            "worker_api": ours,
        },
    }
