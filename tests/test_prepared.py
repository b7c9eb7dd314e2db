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
from asyncgate.handlers import prepared
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
