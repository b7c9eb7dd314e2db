"""Every ``operationId`` of the spec bound to its handler, from one table.

Job operations come from the kinds table (each kind's submit, poll and cancel operation, and
the OpenAI-style operations of the kinds that have them); the rest are listed here. Connexion
asks :func:`resolver` for each operation when the app is built, so an operation the table does
not know stops the app at start-up instead of answering 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from connexion.resolver import Resolver

from asyncgate.handlers import webhooks
from asyncgate.handlers.header import header_handler
from asyncgate.handlers.health import getHealth
from asyncgate.handlers.jobs import cancel_handler, poll_handler, submit_handler
from asyncgate.handlers.listing import listAsyncJobs
from asyncgate.handlers.metrics import getMetrics
from asyncgate.kinds import KINDS

Handler = Callable[..., Awaitable[Any]]

WEBHOOK_OPERATIONS = (
    "listWebhookEndpoints",
    "createWebhookEndpoint",
    "getWebhookEndpoint",
    "disableWebhookEndpoint",
    "enableWebhookEndpoint",
    "rotateWebhookSecret",
    "testWebhookEndpoint",
    "listWebhookDeliveries",
    "getWebhookDelivery",
    "redeliverWebhookDelivery",
)


def operations() -> dict[str, Handler]:
    """operationId -> handler for the whole spec."""
    table: dict[str, Handler] = {
        "getHealth": getHealth,
        "getMetrics": getMetrics,
        "listAsyncJobs": listAsyncJobs,
    }
    for name in WEBHOOK_OPERATIONS:
        table[name] = getattr(webhooks, name)
    for kind, info in KINDS.items():
        table[info.submit_operation] = submit_handler(kind)
        table[info.poll_operation] = poll_handler(kind)
        table[info.cancel_operation] = cancel_handler(kind)
        for operation in info.openai_operations:
            table[operation] = header_handler(kind, operation)
    return table


def resolver(table: Mapping[str, Handler] | None = None) -> Resolver:
    """A Connexion resolver over ``table`` (by default :func:`operations`)."""
    bound = dict(operations() if table is None else table)

    def resolve(operation_id: str) -> Handler:
        try:
            return bound[operation_id]
        except KeyError:
            raise LookupError(f"operationId {operation_id!r} has no handler") from None

    return Resolver(function_resolver=resolve)
