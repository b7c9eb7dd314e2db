"""The child processes of ``serve`` and ``api --processes N``: tied to their parent's life.

:class:`WorkerProcess` runs ``serve``'s worker and sweeper in a process of their own and starts
another should it die. :func:`die_with_parent` makes a child stop gracefully (SIGTERM) when the
process that started it is killed, so that no API or worker process outlives its ``serve``.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess

log = logging.getLogger("asyncgate")

_PR_SET_PDEATHSIG = 1
RESTART_DELAY_SECONDS = 1.0
"""Pause before a worker process that died is started again (a crash loop stays slow)."""


def die_with_parent() -> None:
    """In a child started by :mod:`multiprocessing`: get SIGTERM when the parent dies (Linux;
    elsewhere nothing happens), and stop now if it is already gone."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent.pid:
        os.kill(os.getpid(), signal.SIGTERM)


class WorkerProcess:
    """``target`` in a spawned child process for the duration of a ``with`` block.

    A child that exits with an error (or is killed) is started again after
    :data:`RESTART_DELAY_SECONDS`; one that exits 0 was stopped on purpose (SIGTERM or SIGINT
    sent to it) and is not. Leaving the block sends SIGTERM and waits up to ``grace_seconds``
    for the graceful stop (running jobs finish or are handed back) before killing it.
    """

    def __init__(self, target: Callable[[], None], *, grace_seconds: float) -> None:
        self._target = target
        self._grace = grace_seconds
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="worker-process", daemon=True)

    def __enter__(self) -> WorkerProcess:
        self._start()
        self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._stopping.set()
            process = self._process
        self._watcher.join()
        if process is None or not process.is_alive():
            return
        process.terminate()
        process.join(self._grace)
        if process.is_alive():
            log.warning("the worker process did not stop within %.0fs; killing it", self._grace)
            process.kill()
            process.join()

    def _start(self) -> None:
        process = self._context.Process(target=self._target, name="asyncgate-worker")
        process.start()
        self._process = process

    def _watch(self) -> None:
        while not self._stopping.is_set():
            process = self._process
            assert process is not None
            process.join(0.5)
            if process.is_alive() or self._stopping.is_set():
                continue
            if process.exitcode == 0:
                log.info("the worker process stopped")
                return
            log.error(
                "the worker process exited with code %s; starting another in %.0fs",
                process.exitcode,
                RESTART_DELAY_SECONDS,
            )
            if self._stopping.wait(RESTART_DELAY_SECONDS):
                return
            with self._lock:
                if not self._stopping.is_set():
                    self._start()
