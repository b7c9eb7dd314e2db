"""Connexion's per-operation machinery, prepared once per operation instead of per request.

On every request Connexion 3 builds the operation's URI parser (three times), its parameter
validator and body validator, and wraps the handler in its parameter and response decorators
after inspecting its signature (``AsyncOperation.fn`` is a property): about a fifth of a small
request's CPU. Here each is built once, on the operation's first request (the handler's URI
parser reads the operation from the request's context) or per content type; what each request
gets (validation of its parameters and body, its arguments, its response) is Connexion's own.
:class:`RequestValidationMiddleware` replaces Connexion's in the middleware stack, and
:func:`install` prepares the handler calls of the APIs added afterwards.

Handlers also get the JSON body the request validator parsed (orjson, in
:mod:`asyncgate.handlers.validation`, which leaves it in the scope under :data:`PARSED_JSON`)
instead of Connexion's second parse of the replayed bytes with the standard library: for a
1 MB request that parse was the largest single cost of a submission, and a second copy of it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, cast

from connexion import AsyncApp
from connexion.apps.asynchronous import AsyncApi, AsyncOperation
from connexion.context import context, operation, receive, scope
from connexion.decorators import StarletteDecorator
from connexion.decorators.parameter import (
    CONTEXT_NAME,
    AsyncParameterDecorator,
    _get_path_arguments,
    pythonic,
    sanitized,
    unwrap_decorators,
)
from connexion.exceptions import UnsupportedMediaTypeProblem
from connexion.frameworks.starlette import Starlette as StarletteFramework
from connexion.lifecycle import ConnexionRequest
from connexion.middleware import request_validation
from connexion.operations import AbstractOperation
from connexion.uri_parsing import AbstractURIParser
from connexion.utils import inspect_function_arguments, is_nullable
from starlette.types import Receive, Scope, Send

PARSED_JSON = "asyncgate.parsed_json"
"""Scope key of the validated JSON body (absent when no JSON body was validated)."""
JSON_TEXT = "asyncgate.json_text"
"""Scope key of that body's bytes as received: stored as the job's request, they need no
second encoding (PostgreSQL's jsonb reads them as the parser did)."""


class _ParsedBodyRequest(ConnexionRequest):
    async def json(self) -> Any:
        scope = self._starlette_request.scope
        if PARSED_JSON in scope:
            return scope[PARSED_JSON]
        return await super().json()


class _ParsedBodyFramework(StarletteFramework):
    @staticmethod
    def get_request(
        *, scope: Scope, receive: Receive, uri_parser: AbstractURIParser, **kwargs: Any
    ) -> ConnexionRequest:
        return _ParsedBodyRequest(scope, receive, uri_parser=uri_parser)


CONTENT_TYPES_KEPT = 8
"""Body validators kept per operation, one per content type and encoding."""


class _Validation(request_validation.RequestValidationOperation):
    """Connexion's request validation with its validators built once (per content type)."""

    @functools.cached_property
    def _parameters(self) -> Any:
        operation = self._operation
        parser = operation._uri_parser_class(operation.parameters, operation.body_definition())
        return self._validator_map["parameter"](
            operation.parameters,
            uri_parser=parser,
            strict_validation=self.strict_validation,
            security_query_params=self.security_query_params,
        )

    @functools.cached_property
    def _bodies(self) -> dict[tuple[str, str], Any]:
        return {}

    def _body(self, mime_type: str, encoding: str) -> Any:
        """The body validator for ``mime_type`` (None: nothing to check), or the 415 problem's
        detail (a string) for a type the operation does not consume. Kept for the first
        :data:`CONTENT_TYPES_KEPT` content types (clients choose them; the rest are built
        per request)."""
        key = (mime_type, encoding)
        if key in self._bodies:
            return self._bodies[key]
        body = self._build_body(mime_type, encoding)
        if len(self._bodies) < CONTENT_TYPES_KEPT:
            self._bodies[key] = body
        return body

    def _build_body(self, mime_type: str, encoding: str) -> Any:
        try:
            self.validate_mime_type(mime_type)
        except UnsupportedMediaTypeProblem as problem:
            return str(problem.detail)
        operation = self._operation
        schema = operation.body_schema(mime_type)
        if not schema:
            return None
        validator = self._validator_map["body"].get(mime_type)
        if validator is None:
            return None
        return validator(
            schema=schema,
            required=operation.request_body.get("required", False),
            nullable=is_nullable(operation.body_definition(mime_type)),
            encoding=encoding,
            strict_validation=self.strict_validation,
            uri_parser=operation.uri_parser_class(
                operation.parameters, operation.body_definition()
            ),
        )

    @functools.cached_property
    def _takes_body(self) -> bool:
        """Whether the operation declares a request body: without one, every content type is
        accepted and nothing is read (a poll needs no look at its Content-Type)."""
        return bool(self._operation.consumes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._parameters.validate(scope)
        if not self._takes_body:
            await self.next_app(scope, receive, send)
            return
        body = self._body(*self.extract_content_type(scope["headers"]))
        if isinstance(body, str):
            raise UnsupportedMediaTypeProblem(detail=body)
        if body is not None:
            receive, scope = await body.wrap_receive(receive, scope=scope)
        await self.next_app(scope, receive, send)


class _ValidationApi(request_validation.RequestValidationAPI):
    def make_operation(self, operation: AbstractOperation) -> _Validation:
        return _Validation(
            self.next_app,
            operation=operation,
            strict_validation=self.strict_validation,
            validator_map=self.validator_map,
        )


class RequestValidationMiddleware(request_validation.RequestValidationMiddleware):
    """Connexion's validation middleware on :class:`_Validation` operations."""

    api_cls = _ValidationApi


class _Parameters(AsyncParameterDecorator):
    """Connexion's parameter decorator with parameter names sanitised once, not by three
    regular expressions per name and request; a handler that takes path parameters alone (no
    body, query parameters or ``**kwargs``: a poll, a cancel) gets them without Connexion's
    search of every request for a body, form files and query parameters it would not pass."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        rule = pythonic if kwargs.get("pythonic_params") else sanitized
        self.sanitize_fn = functools.lru_cache(maxsize=256)(rule)

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        general = super().__call__(function)
        sanitize = cast("Callable[[str], str]", self.sanitize_fn)
        arguments, has_kwargs = inspect_function_arguments(unwrap_decorators(function))
        path_only: list[bool] = []
        """Decided on the operation's first request, when its definition is at hand."""

        @functools.wraps(function)
        async def wrapper(request: ConnexionRequest) -> Any:
            if not path_only:
                path_only.append(
                    not has_kwargs
                    and not operation.is_request_body_defined
                    and not any(p["in"] == "query" for p in operation.parameters)
                )
            if not path_only[0]:
                return await general(request)
            kwargs = _get_path_arguments(
                request.path_params, operation=operation, sanitize=sanitize
            )
            for key, value in context.items():
                if key in arguments:
                    kwargs[key] = value
            if CONTEXT_NAME in arguments:
                kwargs[CONTEXT_NAME] = context
            return await function(**kwargs)

        return wrapper


class _DecoratedOnce(StarletteDecorator):
    """Connexion's Starlette decorator whose wrappers are built when it is applied, handing
    handlers the validator's parsed body."""

    framework = _ParsedBodyFramework

    @property
    def _parameter_decorator_cls(self) -> type[AsyncParameterDecorator]:
        return _Parameters

    def __call__(self, function: Callable[..., Any]) -> Callable[[], Awaitable[Any]]:
        decorated = self.decorate(function)
        parsers: list[Any] = []

        async def call() -> Any:
            if not parsers:
                parsers.append(self.uri_parser)
            request = self.framework.get_request(
                uri_parser=parsers[0], scope=scope, receive=receive
            )
            return await decorated(request)

        return call


class _Operation(AsyncOperation):
    @functools.cached_property
    def fn(self) -> Callable[[], Awaitable[Any]]:
        decorator = _DecoratedOnce(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)
        return decorator(self._fn)


class _Api(AsyncApi):
    def make_operation(self, operation: AbstractOperation) -> AsyncOperation:
        return _Operation.from_operation(
            operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier
        )


def install(app: AsyncApp) -> None:
    """Have the APIs added to ``app`` from now on call their handlers as :class:`_Operation`."""
    app._middleware_app.api_cls = _Api
