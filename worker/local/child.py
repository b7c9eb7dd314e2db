"""Inside a local inference process: the stop flags, the models (each loaded once, on its first
job) and the dispatch from a job's kind to the module that runs it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_flags: Sequence[int] = ()
_slot = 0

FileData = tuple[str, str | None, str | None, bytes]
"""An uploaded file as it travels to the process: field, filename, content type, bytes."""


@dataclass(slots=True)
class Answer:
    """A finished job: JSON ``result``, or raw ``body`` with its ``content_type`` (audio)."""

    result: Any = None
    body: bytes | None = None
    content_type: str | None = None


@dataclass(slots=True)
class LocalFailure:
    """A job the model could not run; 400 for a request it cannot serve."""

    status_code: int
    message: str
    param: str | None = None
    transient: bool = False


class Refused(Exception):
    """Raised by a kind's runner for a request it cannot serve (answered 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Stopped(Exception):
    """The job's stop flag was raised (cancelled, past its deadline, or shutting down)."""


def initialise(flags: Sequence[int]) -> None:
    """Process initialiser: keep the shared stop flags."""
    global _flags
    _flags = flags


def stop_requested() -> bool:
    """Whether the running job's stop flag is up."""
    return bool(_flags[_slot])


def check_stop() -> None:
    """Raise Stopped when the running job's flag is up; runners call it between steps."""
    if stop_requested():
        raise Stopped


def cached(load: Callable[[], Any]) -> Callable[[], Any]:
    """A model loader that loads once per process."""
    return functools.cache(load)


def run(slot: int, kind: str, body: dict[str, Any], files: list[FileData]) -> Answer | LocalFailure:
    """Run one job in this process under stop flag ``slot``."""
    global _slot
    _slot = slot
    from asyncgate.worker.local import runners

    try:
        check_stop()
        return runners.RUNNERS[kind](body, files)
    except Stopped:
        return LocalFailure(499, "the job was stopped")
    except Refused as exc:
        return LocalFailure(400, str(exc), param=exc.param)
    except Exception as exc:  # any model failure ends this job, never the process
        return LocalFailure(500, f"local inference failed: {exc.__class__.__name__}: {exc}")
