"""The per-operation machinery built once (handlers.prepared): answers as Connexion's own, and
what it keeps per operation stays bounded whatever content types clients send."""

from __future__ import annotations

import gc
from typing import Any

from connexion.resolver import Resolver
from starlette.responses import Response
from starlette.testclient import TestClient

from asyncgate.app import connexion_app
from asyncgate.config import LimitsConfig
from asyncgate.handlers import context, prepared
from asyncgate.metrics import Metrics

CHAT = "/v1/async/chat/completions"
BODY = {"model": "fake/ok", "messages": [{"role": "user", "content": "hello"}]}


def app_answering_with_its_body() -> Any:
    async def handler(body: Any = None, **_: Any) -> Response:
        return Response(repr(body), status_code=202)

    return connexion_app(
        LimitsConfig(), Metrics(), resolver=Resolver(function_resolver=lambda _: handler)
    )


def test_handlers_get_the_parsed_body_and_integers_beyond_64_bits_stay_exact() -> None:
    with TestClient(app_answering_with_its_body()) as client:
        plain = client.post(CHAT, json=BODY)
        wide = client.post(CHAT, json={**BODY, "seed": 2**70 + 1})
        nested = client.post(CHAT, json={**BODY, "metadata": {"n": [1.5, -(2**63) - 1]}})
        huge_float = client.post(CHAT, json={**BODY, "temperature": 1.5e300})
    assert plain.status_code == 202 and plain.text == repr(BODY)
    assert wide.status_code == 202 and str(2**70 + 1) in wide.text
    assert nested.status_code == 202 and str(-(2**63) - 1) in nested.text
    assert huge_float.status_code == 400  # still a float, and out of the spec's range


def test_body_validators_kept_per_operation_are_bounded() -> None:
    with TestClient(app_answering_with_its_body()) as client:
        refused = [
            client.post(CHAT, content=b"{}", headers={"content-type": f"application/x{i}+json"})
            for i in range(3 * prepared.CONTENT_TYPES_KEPT)
        ]
        accepted = client.post(CHAT, json=BODY)
    assert {r.status_code for r in refused} == {415}
    assert accepted.status_code == 202
    kept = [len(o._bodies) for o in gc.get_objects() if isinstance(o, prepared._Validation)]
    assert max(kept) == prepared.CONTENT_TYPES_KEPT


def app_answering_with_its_arguments() -> Any:
    async def handler(**arguments: Any) -> Response:
        return Response(repr(sorted(arguments.items())), status_code=200)

    async def poll(job_id: str) -> Response:
        return Response(repr(job_id), status_code=200)

    def resolve(operation_id: str) -> Any:
        return poll if operation_id.startswith("get") and "Job" in operation_id else handler

    return connexion_app(LimitsConfig(), Metrics(), resolver=Resolver(function_resolver=resolve))


def test_path_only_handlers_get_their_path_parameters_as_connexion_gives_them() -> None:
    job_id = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"
    with TestClient(app_answering_with_its_arguments()) as client:
        polled = [client.get(f"{CHAT}/{job_id}") for _ in range(2)]  # first request decides
        with_query = client.get(f"{CHAT}/{job_id}?x=1", headers={"content-type": "text/plain"})
        not_uuid = client.get(f"{CHAT}/not-a-uuid")
        listed = client.get("/v1/async/jobs?limit=2")
    assert [(r.status_code, r.text) for r in polled] == [(200, repr(job_id))] * 2
    assert (with_query.status_code, with_query.text) == (200, repr(job_id))
    # Draft 4 knows no uuid format: the handler refuses what is not a job id (a 404)
    assert (not_uuid.status_code, not_uuid.text) == (200, repr("not-a-uuid"))
    # an operation with query parameters still gets them from Connexion, typed by the spec
    assert listed.status_code == 200 and "('limit', 2)" in listed.text


def test_request_headers_are_case_insensitive_and_the_first_of_a_name_wins() -> None:
    scope = {
        "type": "http",
        "headers": [(b"x-api-key", b"first"), (b"prefer", b"wait=1"), (b"x-api-key", b"second")],
    }
    headers = context.RequestHeaders(scope=scope)
    assert headers.get("X-Api-Key") == "first" and headers["x-api-key"] == "first"
    assert headers.get("idempotency-key") is None and headers.get("missing", "d") == "d"
    assert "PREFER" in headers and "traceparent" not in headers
    assert headers.getlist("x-api-key") == ["first", "second"]
    assert context.request_headers(scope) is context.request_headers(scope)
