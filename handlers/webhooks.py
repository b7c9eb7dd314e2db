"""The webhook management API under ``/api/webhooks``: admin virtual keys only.

The command line (``asyncgate webhooks ...``) does the same through the same store.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from starlette.responses import Response

from asyncgate.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotConfigured,
    NotFound,
    Unauthorized,
)
from asyncgate.handlers import render
from asyncgate.handlers.auth import resolve_key
from asyncgate.handlers.context import headers, services
from asyncgate.models.webhooks import DeliveryInfo, DuplicateEndpointName, EndpointInfo
from asyncgate.services import Services
from asyncgate.webhooks import (
    JOB_EVENTS,
    DeliveryState,
    Event,
    message_id,
    new_secret,
    parse_message_id,
    url_problem,
)

ADMIN_ONLY = "the webhook management API needs an admin virtual key"
NOT_CONFIGURED = (
    "webhooks are not configured on this gateway: set webhooks.secret_key "
    "(ASYNCGATE_WEBHOOKS_SECRET_KEY)"
)


async def _admin() -> Services:
    svc = services()
    identity = await resolve_key(svc, headers(), Unauthorized("invalid virtual key"))
    if identity is None:
        raise Unauthorized(ADMIN_ONLY)
    if not identity.is_admin:
        raise Forbidden(ADMIN_ONLY)
    return svc


def endpoint_json(endpoint: EndpointInfo) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret."""
    return {
        "name": endpoint.name,
        "url": endpoint.url,
        "events": [e.value for e in endpoint.events],
        "key": endpoint.owner_key,
        "created_at": render.timestamp(endpoint.created_at),
        "enabled": endpoint.disabled_at is None,
        "disabled_at": _time(endpoint.disabled_at),
        "disabled_reason": endpoint.disabled_reason,
        "previous_secret_expires_at": _time(endpoint.previous_secret_expires_at),
    }


def delivery_json(delivery: DeliveryInfo) -> dict[str, Any]:
    """A delivery, with its attempt log when it was read with one."""
    body: dict[str, Any] = {
        "id": message_id(delivery.id),
        "endpoint": delivery.endpoint,
        "event": delivery.event.value,
        "job_id": None if delivery.job_id is None else str(delivery.job_id),
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "created_at": render.timestamp(delivery.created_at),
        "next_attempt_at": _time(delivery.next_attempt_at),
        "finished_at": _time(delivery.finished_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
    }
    if delivery.log:
        body["log"] = [
            {
                "attempt": a.attempt,
                "attempted_at": render.timestamp(a.attempted_at),
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "outcome": a.outcome.value,
                "error": a.error,
            }
            for a in delivery.log
        ]
    return body


def _time(value: datetime | None) -> str | None:
    return None if value is None else render.timestamp(value)


def parse_delivery_id(value: str) -> uuid.UUID:
    """The delivery a ``msg_<hex>`` id names; NotFound for one that cannot name any."""
    try:
        return parse_message_id(value)
    except ValueError:
        raise NotFound("no webhook delivery with that id") from None


async def listWebhookEndpoints() -> Response:
    svc = await _admin()
    data = [endpoint_json(e) for e in await svc.webhooks.endpoints()]
    return render.json_response({"object": "list", "data": data}, 200)


async def createWebhookEndpoint(body: dict[str, Any]) -> Response:
    svc = await _admin()
    if svc.webhooks.box is None:
        raise NotConfigured(NOT_CONFIGURED)
    problem = url_problem(body["url"], allow_http=svc.settings.webhooks.allow_http)
    if problem is not None:
        raise BadRequest(problem, param="url")
    owner = None
    if body.get("key") is not None:
        owner = await svc.keys.id_of(body["key"])
        if owner is None:
            raise BadRequest(f"no active virtual key named {body['key']!r}", param="key")
    events = [Event(e) for e in body.get("events") or [e.value for e in JOB_EVENTS]]
    secret = new_secret()
    try:
        endpoint = await svc.webhooks.create_endpoint(
            body["name"], body["url"], events, owner, secret
        )
    except DuplicateEndpointName:
        raise Conflict(f"a webhook endpoint named {body['name']!r} exists already") from None
    return render.json_response({**endpoint_json(endpoint), "secret": secret}, 201)


async def _endpoint(svc: Services, name: str) -> EndpointInfo:
    endpoint = await svc.webhooks.endpoint(name)
    if endpoint is None:
        raise NotFound(f"no webhook endpoint named {name!r}")
    return endpoint


async def getWebhookEndpoint(name: str) -> Response:
    svc = await _admin()
    return render.json_response(endpoint_json(await _endpoint(svc, name)), 200)


async def disableWebhookEndpoint(name: str) -> Response:
    svc = await _admin()
    await svc.webhooks.set_disabled(name, True)
    return render.json_response(endpoint_json(await _endpoint(svc, name)), 200)


async def enableWebhookEndpoint(name: str) -> Response:
    svc = await _admin()
    await svc.webhooks.set_disabled(name, False)
    return render.json_response(endpoint_json(await _endpoint(svc, name)), 200)


async def rotateWebhookSecret(name: str) -> Response:
    svc = await _admin()
    if svc.webhooks.box is None:
        raise NotConfigured(NOT_CONFIGURED)
    secret = new_secret()
    grace = svc.settings.webhooks.rotation_grace_seconds
    if not await svc.webhooks.rotate_secret(name, secret, grace):
        raise NotFound(f"no webhook endpoint named {name!r}")
    endpoint = await _endpoint(svc, name)
    return render.json_response({**endpoint_json(endpoint), "secret": secret}, 200)


async def testWebhookEndpoint(name: str) -> Response:
    svc = await _admin()
    delivery_id = await svc.webhooks.create_test_delivery(name)
    if delivery_id is None:
        raise NotFound(f"no webhook endpoint named {name!r}")
    delivery = await svc.webhooks.delivery(delivery_id)
    assert delivery is not None
    return render.json_response(delivery_json(delivery), 202)


async def listWebhookDeliveries(
    endpoint: str | None = None,
    state: str | None = None,
    since: str | None = None,
    job_id: str | None = None,
    limit: int = 50,
) -> Response:
    svc = await _admin()
    try:
        since_at = None if since is None else datetime.fromisoformat(since)
    except ValueError:
        raise BadRequest("since must be an RFC 3339 date-time", param="since") from None
    if since_at is not None and since_at.tzinfo is None:
        raise BadRequest("since must carry a time zone (Z or +hh:mm)", param="since")
    deliveries = await svc.webhooks.deliveries(
        endpoint=endpoint,
        state=None if state is None else DeliveryState(state),
        since=since_at,
        job_id=None if job_id is None else uuid.UUID(job_id),
        limit=limit,
    )
    data = [delivery_json(d) for d in deliveries]
    return render.json_response({"object": "list", "data": data}, 200)


async def getWebhookDelivery(delivery_id: str) -> Response:
    svc = await _admin()
    delivery = await svc.webhooks.delivery(parse_delivery_id(delivery_id))
    if delivery is None:
        raise NotFound("no webhook delivery with that id")
    return render.json_response(delivery_json(delivery), 200)


async def redeliverWebhookDelivery(delivery_id: str) -> Response:
    svc = await _admin()
    parsed = parse_delivery_id(delivery_id)
    if not await svc.webhooks.redeliver(parsed):
        if await svc.webhooks.delivery(parsed) is None:
            raise NotFound("no webhook delivery with that id")
        raise Conflict("the delivery is still queued or in flight; it will be sent anyway")
    delivery = await svc.webhooks.delivery(parsed)
    assert delivery is not None
    return render.json_response(delivery_json(delivery), 202)
