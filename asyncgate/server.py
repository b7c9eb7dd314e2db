"""Running the processes: ``serve`` (API + worker + sweeper), ``api`` and ``worker``.

``serve`` runs its API in ``server.serve_processes`` processes sharing the port (by default one
per core) and its worker and sweeper in a process of their own, all children of one parent.
Every process stops gracefully on SIGTERM or SIGINT and exits 0: the API stops accepting
connections and finishes open requests; the worker stops claiming, lets running jobs finish
within the grace period and hands the rest back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Coroutine, Iterator
from typing import Any

import uvicorn

from asyncgate.app import create_app
from asyncgate.config import Settings, load_settings
from asyncgate.connections import ConnectionLimits, connection_limits, protocol_factory
from asyncgate.logs import configure
from asyncgate.metrics import MULTIPROCESS_DIR, Metrics
from asyncgate.runtime import open_database, worker_runtime
from asyncgate.supervisor import WorkerProcess, die_with_parent

log = logging.getLogger("asyncgate")


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when available."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every POSIX platform
        loop_factory = None
    tune_garbage_collector()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the request path.

    A server allocates many short-lived objects per request, and with the default thresholds
    the collector ran often enough to cost about a fifth of the submit throughput. Everything
    alive after start-up (modules, the spec, the app) is frozen out of future collections, and
    the youngest generation is collected every 50,000 allocations instead of 700.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _uvicorn_options(settings: Settings, limits: ConnectionLimits) -> dict[str, Any]:
    return {
        "host": settings.server.host,
        "port": settings.server.port,
        "http": protocol_factory(limits),
        "timeout_keep_alive": limits.idle_timeout,
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": int(settings.worker.shutdown_grace_seconds) + 5,
    }


def _ignore_signals_after_uvicorn() -> None:
    # uvicorn re-raises the signal that stopped it once it has shut down; with these handlers
    # that re-raise is a no-op and the process exits 0 after its graceful shutdown.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)


async def serve_http(settings: Settings, database_url: str, *, run_worker: bool) -> None:
    """One process serving the API (and, for ``serve``, a worker and the sweeper)."""
    limits = connection_limits(settings, run_worker=run_worker)
    app = create_app(settings, database_url, run_worker=run_worker)
    options = _uvicorn_options(settings, limits)
    server = uvicorn.Server(uvicorn.Config(app, loop="none", **options))
    _ignore_signals_after_uvicorn()
    log.info(
        "asyncgate %s listening on http://%s:%d",
        "serve" if run_worker else "api",
        settings.server.host,
        settings.server.port,
    )
    await server.serve()


def serve(settings: Settings, database_url: str, config_path: str | None) -> None:
    """``asyncgate serve``: the API in ``server.serve_processes`` processes (0: one per core)
    and, with ``server.serve_worker_process``, the worker and sweeper in another; without it,
    each API process runs a worker and sweeper of its own."""
    processes = settings.server.serve_processes or os.cpu_count() or 1
    own_process = settings.server.serve_worker_process
    if processes == 1 and not own_process:
        run(serve_http(settings, database_url, run_worker=True))
        return
    log.info(
        "asyncgate serve: %d API process(es)%s",
        processes,
        " and a worker process" if own_process else ", each with a worker",
    )
    with _children_environment(settings, database_url, config_path):
        grace = settings.worker.shutdown_grace_seconds + 10
        worker = WorkerProcess(worker_child, grace_seconds=grace) if own_process else None
        with worker or contextlib.nullcontext():
            if processes == 1:
                run(serve_http(settings, database_url, run_worker=False))
            else:
                limits = connection_limits(settings, run_worker=not own_process)
                factory = "app_factory" if own_process else "serve_app_factory"
                _run_processes(settings, limits, processes, factory)


def serve_http_processes(settings: Settings, database_url: str, config_path: str | None) -> None:
    """``api --processes N``: N processes sharing the port, each built by :func:`app_factory`."""
    limits = connection_limits(settings, run_worker=False)
    with _children_environment(settings, database_url, config_path):
        _run_processes(settings, limits, settings.server.processes, "app_factory")


@contextlib.contextmanager
def _children_environment(
    settings: Settings, database_url: str, config_path: str | None
) -> Iterator[None]:
    """The environment that child processes read their configuration from: the file and the
    database URL travel in it. They inherit the open-file limit raised by the parent."""
    os.environ["ASYNCGATE_DATABASE_URL"] = database_url
    os.environ["ASYNCGATE_LOGGING_FORMAT"] = settings.logging.format
    if config_path:
        os.environ["ASYNCGATE_CONFIG"] = os.path.abspath(config_path)
    # The processes keep their metrics in files here, so that each scrape reports them all.
    metrics_dir = None
    if not os.environ.get(MULTIPROCESS_DIR):
        metrics_dir = tempfile.mkdtemp(prefix="asyncgate-metrics-")
        os.environ[MULTIPROCESS_DIR] = metrics_dir
    try:
        yield
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_processes(
    settings: Settings, limits: ConnectionLimits, processes: int, factory: str
) -> None:
    uvicorn.run(
        f"asyncgate.server:{factory}",
        factory=True,
        workers=processes,
        loop="uvloop",
        **_uvicorn_options(settings, limits),
    )


def _child_settings() -> Settings:
    die_with_parent()
    settings = load_settings()
    configure(settings.log_level, settings.logging.format)
    return settings


def app_factory() -> Any:
    """App for one API process of ``api --processes N`` or ``serve`` (configuration from the
    environment)."""
    settings = _child_settings()
    app = create_app(settings, os.environ["ASYNCGATE_DATABASE_URL"])
    tune_garbage_collector()
    return app


def serve_app_factory() -> Any:
    """App for one process of ``serve`` without a worker process: it runs a worker too."""
    settings = _child_settings()
    app = create_app(settings, os.environ["ASYNCGATE_DATABASE_URL"], run_worker=True)
    tune_garbage_collector()
    return app


def worker_child() -> None:
    """``serve``'s worker process (configuration from the environment), at the niceness of
    ``server.serve_worker_nice``; the API processes serve its metrics from the shared
    directory."""
    settings = _child_settings()
    if settings.server.serve_worker_nice:
        os.nice(settings.server.serve_worker_nice)
    run(run_worker(settings, os.environ["ASYNCGATE_DATABASE_URL"], serve_metrics=False))


async def run_worker(settings: Settings, database_url: str, *, serve_metrics: bool = True) -> None:
    """A worker and sweeper without HTTP, until SIGTERM or SIGINT; with ``serve_metrics``, its
    metrics on ``metrics.port`` (when set)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    if serve_metrics and settings.metrics.port:
        metrics.serve(settings.metrics.host, settings.metrics.port)
        log.info(
            "worker metrics on http://%s:%d/metrics", settings.metrics.host, settings.metrics.port
        )
    database = open_database(settings, database_url, generic_plans=True)
    async with database as db, worker_runtime(settings, db, metrics):
        await stop.wait()
        log.info("stopping worker")
