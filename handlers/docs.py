"""The served spec (``/openapi.json``, ``/openapi.yaml``) and its Swagger UI at ``/docs``.

Connexion writes the request's root path into the served document's ``servers``, which for a
gateway served at ``/`` is an empty URL that Swagger UI's "Try it out" and client generators
cannot use; the gateway serves ``/`` there instead.
"""

from __future__ import annotations

from typing import Any

from connexion.middleware.swagger_ui import SwaggerUIAPI, SwaggerUIMiddleware
from connexion.spec import Specification
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

SERVER = {"url": "/", "description": "this gateway, at the address the document came from"}


class _SpecAPI(SwaggerUIAPI):
    def _spec_for_prefix(self, request: Request) -> dict[str, Any]:
        spec: dict[str, Any] = super()._spec_for_prefix(request)
        if any(server.get("url") for server in spec.get("servers", ())):
            return spec  # behind a proxy that set a root path: Connexion's entry is right
        return {**spec, "servers": [SERVER]}


class DocsMiddleware(SwaggerUIMiddleware):
    """Connexion's spec and Swagger UI middleware, with a ``servers`` entry that can be used.

    A request whose path names none of the documents passes straight on: Connexion's middleware
    copies the scope and runs it through a router of its own first (a twentieth of a poll's CPU).
    """

    _served: tuple[str, ...] = ()
    """Path fragments of what the middleware serves: ``/openapi.`` (json and yaml), ``/docs``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not any(part in scope["path"] for part in self._served):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def add_api(
        self,
        specification: Specification,
        base_path: str | None = None,
        arguments: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        api = _SpecAPI(
            specification,
            base_path=base_path,
            arguments=arguments,
            default=self.default_fn,
            **kwargs,
        )
        self.router.mount(api.base_path, app=api.router)
        spec_path = api.options.openapi_spec_path
        self._served += (
            spec_path[: spec_path.rindex(".") + 1],
            api.options.swagger_ui_path.rstrip("/"),
        )
