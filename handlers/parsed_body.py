"""Handlers get the JSON body the request validator parsed, instead of a second parse.

Connexion validates a JSON body (parsed with orjson in :mod:`asyncgate.handlers.validation`)
and then hands the handler a body parsed again from the replayed bytes, by the standard
library: for a 1 MB request that second parse is the largest single cost of a submission, and
a second copy of the request in memory. The validator leaves its result in the ASGI scope under
:data:`PARSED_JSON`; the request class here answers ``json()`` with it.
"""

from __future__ import annotations

from typing import Any

from connexion.apps.asynchronous import AsyncApi, AsyncOperation
from connexion.decorators.main import StarletteDecorator
from connexion.frameworks.starlette import Starlette as StarletteFramework
from connexion.lifecycle import ConnexionRequest
from connexion.operations import AbstractOperation
from connexion.uri_parsing import AbstractURIParser
from starlette.types import Receive, Scope

PARSED_JSON = "asyncgate.parsed_json"
"""Scope key of the validated JSON body (absent when no JSON body was validated)."""


class ParsedBodyRequest(ConnexionRequest):
    async def json(self) -> Any:
        scope = self._starlette_request.scope
        if PARSED_JSON in scope:
            return scope[PARSED_JSON]
        return await super().json()


class ParsedBodyFramework(StarletteFramework):
    @staticmethod
    def get_request(  # type: ignore[override]
        *, scope: Scope, receive: Receive, uri_parser: AbstractURIParser, **kwargs: Any
    ) -> ConnexionRequest:
        return ParsedBodyRequest(scope, receive, uri_parser=uri_parser)


class ParsedBodyDecorator(StarletteDecorator):
    framework = ParsedBodyFramework


class ParsedBodyOperation(AsyncOperation):
    @property
    def fn(self) -> Any:
        decorator = ParsedBodyDecorator(
            pythonic_params=self.pythonic_params, jsonifier=self.jsonifier
        )
        return decorator(self._fn)


class ParsedBodyApi(AsyncApi):
    """Connexion's API whose handlers read the validator's parsed body."""

    def make_operation(self, operation: AbstractOperation) -> AsyncOperation:
        return ParsedBodyOperation.from_operation(
            operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier
        )
