"""The composition root: builds the Connexion app from the spec and wires in the services.

Request flow: size limits -> Connexion routing -> spec validation -> handler (``handlers.*``)
-> job store (``models``) -> worker (``worker``) -> upstream -> result -> poll -> sweeper.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from connexion import AsyncApp
from connexion.middleware import MiddlewarePosition
from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver

from asyncgate.config import LimitsConfig, Settings
from asyncgate.handlers import errors, operations
from asyncgate.handlers.docs import DocsMiddleware
from asyncgate.handlers.hold import HoldMiddleware
from asyncgate.handlers.limits import BodyLimitMiddleware
from asyncgate.handlers.metrics import RequestMetricsMiddleware
from asyncgate.handlers.parsed_body import ParsedBodyApi
from asyncgate.handlers.validation import validator_map
from asyncgate.metrics import Metrics
from asyncgate.resources import spec_dir
from asyncgate.runtime import api_services, open_database, worker_runtime


def create_app(settings: Settings, database_url: str, *, run_worker: bool = False) -> AsyncApp:
    """The ASGI app; with ``run_worker`` its lifespan also runs a worker and the sweeper."""

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            db = await stack.enter_async_context(open_database(settings, database_url))
            local = None
            if run_worker:
                local = await stack.enter_async_context(worker_runtime(settings, db, metrics))
            services = await stack.enter_async_context(
                api_services(settings, db, metrics, local_worker=local.worker if local else None)
            )
            yield {"services": services}

    return connexion_app(settings.limits, metrics, lifespan=lifespan)


def connexion_app(
    limits: LimitsConfig,
    metrics: Metrics,
    *,
    lifespan: Any = None,
    resolver: Resolver | None = None,
) -> AsyncApp:
    """The spec bound to handlers, with the gateway's validators, limits and error mapping.

    ``resolver`` swaps the handlers (the benchmark's baseline app answers without a database).
    """
    middlewares: list[Any] = []
    for middleware in ConnexionMiddleware.default_middlewares:
        if middleware is SwaggerUIMiddleware:
            # Size limits come before the served spec and everything after it.
            middlewares += [functools.partial(BodyLimitMiddleware, limits=limits), DocsMiddleware]
        elif middleware is not SecurityMiddleware:
            middlewares.append(middleware)
    app = AsyncApp(
        __name__,
        specification_dir=spec_dir(),
        lifespan=lifespan,
        middlewares=middlewares,
        swagger_ui_options=SwaggerUIOptions(swagger_ui_path="/docs"),
    )
    app._middleware_app.api_cls = ParsedBodyApi  # no hook but this one for the request class
    # Counting outside the hold, so that a held long-poll's answer and time are counted.
    app.add_middleware(
        RequestMetricsMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION, metrics=metrics
    )
    # Outermost but for counting, so that a held long-poll keeps none of the layers inside it
    # alive.
    app.add_middleware(HoldMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_api(
        "openapi.yaml",
        validator_map=validator_map(),
        strict_validation=False,
        resolver=resolver or operations.resolver(),
    )
    errors.register(app)
    return app
