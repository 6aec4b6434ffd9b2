"""Structured JSON logs: one event per fact, for ops teams to grep and graph.

Every process calls setup() once. Events are snake_case facts (job_forwarded, site_offline)
with the ids bound as fields (job_id, site, slurm_job_id), one JSON object per line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def setup(level: str = "info", stream: TextIO | None = None, process: str = "") -> None:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if process:
        processors.append(_bind_process(process))
    processors += [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def _bind_process(name: str) -> Any:
    def add(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("process", name)
        return event

    return add


def get(**bound: Any) -> Any:
    return structlog.get_logger().bind(**bound)
