"""The composition root: builds the Connexion app from the spec and wires in the services.

Request flow: size limits -> Connexion routing -> spec validation -> handler (``handlers.*``)
-> job store (``models``) -> worker (``worker``) -> upstream -> result -> poll -> sweeper.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from connexion import AsyncApp
from connexion.middleware import MiddlewarePosition
from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.options import SwaggerUIOptions
from connexion.validators import VALIDATOR_MAP, ParameterValidator

from asyncgate.config import Settings
from asyncgate.runtime import api_services, open_database, worker_runtime
from handlers import errors
from handlers.limits import BodyLimitMiddleware
from handlers.submission import TTL_HEADER

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec"


class LenientTTLParameterValidator(ParameterValidator):
    """Connexion's parameter validator, except for the TTL header.

    The contract says a missing, non-numeric, zero or negative TTL falls back to the default
    rather than failing the request, so that header is parsed by the handler instead.
    """

    def validate_header_parameter(self, param: dict[str, Any], request: Any) -> Any:
        if param["name"].lower() == TTL_HEADER:
            return None
        return super().validate_header_parameter(param, request)


def create_app(settings: Settings, database_url: str, *, run_worker: bool = False) -> AsyncApp:
    """The ASGI app; with ``run_worker`` its lifespan also runs a worker and the sweeper."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            db = await stack.enter_async_context(open_database(settings, database_url))
            if run_worker:
                await stack.enter_async_context(worker_runtime(settings, db))
            services = await stack.enter_async_context(api_services(settings, db))
            yield {"services": services}

    middlewares = [
        m for m in ConnexionMiddleware.default_middlewares if m is not SecurityMiddleware
    ]
    app = AsyncApp(
        __name__,
        specification_dir=SPEC_DIR,
        lifespan=lifespan,
        middlewares=middlewares,
        swagger_ui_options=SwaggerUIOptions(swagger_ui_path="/docs"),
    )
    app.add_middleware(
        BodyLimitMiddleware, position=MiddlewarePosition.BEFORE_SWAGGER, limits=settings.limits
    )
    app.add_api(
        "openapi.yaml",
        validator_map={**VALIDATOR_MAP, "parameter": LenientTTLParameterValidator},
        strict_validation=False,
    )
    errors.register(app)
    return app
