"""Running the processes: ``serve`` (API + worker + sweeper), ``api`` and ``worker``.

Every process stops gracefully on SIGTERM or SIGINT and exits 0: the API stops accepting
connections and finishes open requests; the worker stops claiming, lets running jobs finish
within the grace period and hands the rest back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Coroutine
from typing import Any

import uvicorn

from asyncgate.app import create_app
from asyncgate.config import Settings, load_settings
from asyncgate.connections import ConnectionLimits, connection_limits, protocol_factory
from asyncgate.logs import configure
from asyncgate.metrics import MULTIPROCESS_DIR, Metrics
from asyncgate.runtime import open_database, worker_runtime

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


def serve_http_processes(settings: Settings, database_url: str, config_path: str | None) -> None:
    """``api --processes N``: N processes sharing the port, each built by :func:`app_factory`.

    The children read the same configuration: the file and database URL travel in the
    environment. They inherit the open-file limit raised here.
    """
    limits = connection_limits(settings, run_worker=False)
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
        _run_processes(settings, limits)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_processes(settings: Settings, limits: ConnectionLimits) -> None:
    uvicorn.run(
        "asyncgate.server:app_factory",
        factory=True,
        workers=settings.server.processes,
        loop="uvloop",
        **_uvicorn_options(settings, limits),
    )


def app_factory() -> Any:
    """App for one process of ``api --processes N`` (configuration from the environment)."""
    settings = load_settings()
    configure(settings.log_level, settings.logging.format)
    app = create_app(settings, os.environ["ASYNCGATE_DATABASE_URL"])
    tune_garbage_collector()
    return app


async def run_worker(settings: Settings, database_url: str) -> None:
    """A worker and sweeper without HTTP, until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    if settings.metrics.port:
        metrics.serve(settings.metrics.host, settings.metrics.port)
        log.info(
            "worker metrics on http://%s:%d/metrics", settings.metrics.host, settings.metrics.port
        )
    async with open_database(settings, database_url) as db, worker_runtime(settings, db, metrics):
        await stop.wait()
        log.info("stopping worker")
