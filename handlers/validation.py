"""Connexion's request validators, tuned: the spec stays the only input validator.

- JSON bodies are parsed with orjson (strict UTF-8, bounded nesting), once: the handler gets
  the same object (:mod:`asyncgate.handlers.prepared`); each operation's compiled schema
  validator is built once instead of on every request. A body is first checked by the schema
  compiled to Python code (fastjsonschema, about ten times faster); only a body it refuses goes
  through Connexion's own validator, which decides: its verdict and its message are the
  contract's. The compiled check never accepts more (formats use the same checker, and the
  OpenAPI keywords it does not know, such as ``nullable``, only make it stricter).
- The TTL and timeout headers are left to the handler: the contract says a bad value means
  "use the default", not "reject the request". Every other parameter (the job id in the path,
  query parameters, Idempotency-Key) is checked against its schema by a validator compiled
  once per parameter.
- A body that fails its schema is a 400 whose message names the field and what it must be
  (:mod:`asyncgate.handlers.problems`); nothing the client sent is echoed or logged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import fastjsonschema
import orjson
from connexion.datastructures import MediaTypeDict
from connexion.exceptions import BadRequestProblem
from connexion.utils import is_null, is_nullable
from connexion.validators import (
    VALIDATOR_MAP,
    JSONRequestBodyValidator,
    MultiPartFormDataValidator,
    ParameterValidator,
)
from jsonschema import Draft4Validator, ValidationError
from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartParser
from starlette.types import Receive, Scope

from asyncgate.errors import BadRequest
from asyncgate.handlers.context import request_headers
from asyncgate.handlers.prepared import JSON_TEXT, PARSED_JSON
from asyncgate.handlers.problems import describe
from asyncgate.handlers.submission import TIMEOUT_HEADER, TTL_HEADER

_WIDEST_EXACT = 2**63
"""orjson keeps integers from -2**63 to 2**64 - 1 exact and reads wider ones as floats."""


def _holds_wide_number(value: Any) -> bool:
    """Whether ``value`` (as orjson parsed it) holds a float that may be an integer orjson could
    not keep: integral and at least 2**63 in magnitude. It looks at each value once, and at no
    text: scanning a megabyte of body for long runs of digits took longer than parsing it."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif type(item) is float and abs(item) >= _WIDEST_EXACT and item.is_integer():
            return True
    return False


_PARAMETER_VALIDATORS: dict[int, tuple[dict[str, Any], Draft4Validator]] = {}


def _parameter_validator(param: dict[str, Any]) -> Draft4Validator:
    """The compiled validator of a parameter's schema, built once per spec parameter (Connexion
    copies the parameter and compiles its schema again on every request: for a poll, a fifth
    of its CPU went to the job id's)."""
    entry = _PARAMETER_VALIDATORS.get(id(param))
    if entry is None or entry[0] is not param:
        schema = param.get("schema", param)
        entry = (param, Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER))
        _PARAMETER_VALIDATORS[id(param)] = entry
    return entry[1]


class SpecParameterValidator(ParameterValidator):
    """Connexion's parameter validator (path, query, header and cookie parameters against
    their spec schemas, its messages), with each schema compiled once; the TTL and timeout
    headers are left to the handler."""

    def validate_parameter(
        self, parameter_type: str, value: Any, param: dict[str, Any], param_name: Any = None
    ) -> Any:
        if value is None or (is_nullable(param) and is_null(value)):
            return super().validate_parameter(parameter_type, value, param, param_name)
        try:
            _parameter_validator(param).validate(value)
        except ValidationError as exc:
            return str(exc)
        return None

    def validate_header_parameter(self, param: dict[str, Any], request: Any) -> Any:
        name = param["name"]
        if name.lower() in (TTL_HEADER, TIMEOUT_HEADER):
            return None
        value = request_headers(request.scope).get(name)
        return self.validate_parameter("header", value, param)


_FORMATS = {
    name: (lambda value, name=name: Draft4Validator.FORMAT_CHECKER.conforms(value, name))
    for name in Draft4Validator.FORMAT_CHECKER.checkers
}


def _compiled(schema: dict[str, Any]) -> Any:
    """``schema`` (OpenAPI 3.0, a Draft 4 dialect) compiled to a Python function."""
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", **acyclic(schema)}
    return fastjsonschema.compile(draft4, formats=_FORMATS, use_default=False)


def acyclic(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` as a tree: Connexion resolves ``$ref`` into shared, possibly cyclic objects;
    each object found inside itself becomes a definition referred to by ``$ref``."""
    recursive: set[int] = set()
    on_path: set[int] = set()
    done: set[int] = set()

    def find(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                find(item)
        elif isinstance(node, dict):
            if id(node) in on_path:
                recursive.add(id(node))
            elif id(node) not in done:
                on_path.add(id(node))
                for value in node.values():
                    find(value)
                on_path.discard(id(node))
                done.add(id(node))

    definitions: dict[str, Any] = {}
    names: dict[int, str] = {}

    def tree(node: Any, *, defining: bool = False) -> Any:
        if isinstance(node, list):
            return [tree(item) for item in node]
        if not isinstance(node, dict):
            return node
        if id(node) in recursive and not defining:
            name = names.get(id(node))
            if name is None:
                name = names[id(node)] = f"node{len(names)}"
                definitions[name] = tree(node, defining=True)
            return {"$ref": f"#/definitions/{name}"}
        return {key: tree(value) for key, value in node.items()}

    find(schema)
    root = tree(schema)
    return {**root, "definitions": definitions} if definitions else root


def cached_json_validator() -> type[JSONRequestBodyValidator]:
    """A JSON body validator class whose compiled schema validators live in one app's cache."""
    cache: dict[int, tuple[dict[str, Any], Any, Any]] = {}

    class CachedJSONRequestBodyValidator(JSONRequestBodyValidator):
        def _entry(self) -> tuple[dict[str, Any], Any, Any]:
            entry = cache.get(id(self._schema))
            if entry is None or entry[0] is not self._schema:
                entry = (self._schema, super()._validator, _compiled(self._schema))
                cache[id(self._schema)] = entry
            return entry

        @property
        def _validator(self) -> Any:
            return self._entry()[1]

        def _validate(self, body: Any) -> Any:
            if body is None:
                # An optional body is absent on purpose (an OpenAI-style retrieve carries
                # none); its handler says what is missing.
                if self._required and not self._nullable:
                    raise BadRequest("the request body must not be empty")
                return None
            _, validator, compiled = self._entry()
            try:
                compiled(body)
            except fastjsonschema.JsonSchemaException:
                _check(validator, body)
            return body

        async def wrap_receive(self, receive: Receive, *, scope: Scope) -> Any:
            if not int(Headers(scope=scope).get("content-length", 0)):
                return await super().wrap_receive(receive, scope=scope)
            chunks = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            del chunks
            self._validate(self._decode(body, scope))
            # The body goes on as one message: the chunks it came in are freed now, not when
            # the request ends, and the bytes are those the job stores.
            replay = iter(({"type": "http.request", "body": body, "more_body": False},))

            async def replayed() -> Any:
                return next(replay, None) or await receive()

            return replayed, scope

        async def _parse(self, stream: AsyncGenerator[bytes, None], scope: Scope) -> Any:
            return self._decode(b"".join([chunk async for chunk in stream]), scope)

        @staticmethod
        def _decode(body: bytes, scope: Scope) -> Any:
            if not body:
                return None
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise BadRequestProblem(detail=f"malformed JSON body: {exc}") from None
            if _holds_wide_number(parsed):
                # The standard library keeps integers of any width exact (the body is known
                # to be valid JSON by now).
                parsed = json.loads(body)
            scope[PARSED_JSON] = parsed  # the handler's body (asyncgate.handlers.prepared)
            scope[JSON_TEXT] = body
            return parsed

    return CachedJSONRequestBodyValidator


class _ClosingMultiPartParser(MultiPartParser):
    """Starlette's parser whose uploads come back closed."""

    async def parse(self) -> FormData:
        form = await super().parse()
        await form.close()
        return form


class ClosingMultiPartValidator(MultiPartFormDataValidator):
    """Connexion's multipart validator, closing the uploads it parsed: it looks only at their
    field names, and an unclosed upload waits for the garbage collector (a ResourceWarning)."""

    @property
    def _form_parser_cls(self) -> type[MultiPartParser]:
        return _ClosingMultiPartParser

    def _validate(self, body: Any) -> Any:
        if not isinstance(body, dict):
            raise BadRequest("the form could not be read as fields")
        _check(self._validator, body)
        return body


def _check(validator: Any, body: Any) -> None:
    """Raise a 400 naming the first field that breaks the schema."""
    try:
        validator.validate(body)
    except ValidationError as error:
        message, param = describe(error)
        raise BadRequest(f"invalid request: {message}", param=param) from None


def validator_map() -> dict[str, Any]:
    """The validators for one app (each app gets its own schema cache)."""
    body = MediaTypeDict(
        {
            **VALIDATOR_MAP["body"],
            "*/*json": cached_json_validator(),
            "multipart/form-data": ClosingMultiPartValidator,
        }
    )
    return {**VALIDATOR_MAP, "parameter": SpecParameterValidator, "body": body}
