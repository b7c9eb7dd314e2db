"""``asyncgate webhooks ...``: endpoints and deliveries from the command line.

Each command prints a line or an aligned table for people and exits 0 when it did what it was
asked, 1 when what it names does not exist or cannot change, 2 for usage and configuration
errors (as the other commands do).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from asyncgate.dba_args import when
from asyncgate.text import table
from asyncgate.webhooks import (
    ENDPOINT_NAME,
    JOB_EVENTS,
    DeliveryState,
    Event,
    message_id,
    new_secret,
    parse_message_id,
    url_problem,
)

if TYPE_CHECKING:  # the parser is built on every command: the stores load only when run
    from asyncgate.config import Settings
    from asyncgate.models.database import Database
    from asyncgate.models.webhooks import DeliveryInfo, WebhookStore


def add_parser(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``webhooks`` and its subcommands to the CLI (``add_command`` adds one command)."""
    webhooks = add_command("webhooks", help="manage webhook endpoints and deliveries")
    sub = webhooks.add_subparsers(dest="webhooks_command", required=True)
    create = sub.add_parser("create", help="create an endpoint and print its secret once")
    create.add_argument("name", help="unique name; clients send it in x-bf-async-webhook")
    create.add_argument("url", help="https:// URL deliveries are POSTed to")
    create.add_argument(
        "--events",
        nargs="+",
        choices=[e.value for e in JOB_EVENTS],
        metavar="EVENT",
        help="events to deliver (default: all of async_job.completed, .failed, .cancelled)",
    )
    create.add_argument("--key", metavar="KEYNAME", help="only this virtual key's jobs may use it")
    sub.add_parser("list", help="list endpoints (never their secrets)")
    for name, text in (
        ("disable", "stop accepting the endpoint on submits; its deliveries wait"),
        ("enable", "enable the endpoint again; waiting deliveries go out"),
        ("rotate-secret", "print a new secret; the old one signs beside it for a grace period"),
        ("test", "send a webhook.test event now and print the outcome"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("name", help="the endpoint's name")
    deliveries = sub.add_parser("deliveries", help="list deliveries, newest first")
    deliveries.add_argument("--endpoint", metavar="NAME", help="only this endpoint's deliveries")
    deliveries.add_argument(
        "--outcome",
        choices=[s.value for s in DeliveryState],
        help="only deliveries in this state",
    )
    deliveries.add_argument(
        "--since", type=when, metavar="WHEN", help="created since WHEN (ISO 8601, or 30m, 2h, 1d)"
    )
    deliveries.add_argument(
        "--limit", type=int, default=50, help="most deliveries shown (default 50)"
    )
    redeliver = sub.add_parser("redeliver", help="send a finished delivery again (same id)")
    redeliver.add_argument("id", help="the delivery's id (msg_...)")


async def run(settings: Settings, db: Database, args: argparse.Namespace) -> int:
    """Run the ``webhooks`` subcommand ``args`` names; returns the exit code."""
    from asyncgate.models.webhooks import WebhookStore
    from asyncgate.runtime import secret_box

    store = WebhookStore(db, secret_box(settings))
    command = args.webhooks_command
    if command in ("create", "rotate-secret") and store.box is None:
        return _fail(
            "webhooks need webhooks.secret_key (ASYNCGATE_WEBHOOKS_SECRET_KEY): a long random "
            "string every gateway process shares",
            code=2,
        )
    if command == "create":
        return await _create(settings, db, store, args)
    if command == "list":
        rows = [
            (
                e.name,
                e.url,
                ",".join(ev.value.removeprefix("async_job.") for ev in e.events),
                e.owner_key or "-",
                "active" if e.disabled_at is None else f"disabled ({e.disabled_reason})",
            )
            for e in await store.endpoints()
        ]
        print(table(("NAME", "URL", "EVENTS", "KEY", "STATE"), rows))
        return 0
    if command in ("disable", "enable"):
        if not await store.set_disabled(args.name, command == "disable"):
            return _fail(f"no webhook endpoint named {args.name!r}")
        print(f"webhook endpoint {args.name!r} {command}d")
        return 0
    if command == "rotate-secret":
        secret = new_secret()
        grace = settings.webhooks.rotation_grace_seconds
        if not await store.rotate_secret(args.name, secret, grace):
            return _fail(f"no webhook endpoint named {args.name!r}")
        print(secret)
        print(
            f"new secret for {args.name!r}; the previous one signs beside it for {grace:g}s",
            file=sys.stderr,
        )
        return 0
    if command == "test":
        return await _test(settings, db, store, args.name)
    if command == "deliveries":
        return await _deliveries(store, args)
    return await _redeliver(store, args.id)


async def _create(
    settings: Settings, db: Database, store: WebhookStore, args: argparse.Namespace
) -> int:
    if not ENDPOINT_NAME.match(args.name):
        return _fail(
            f"invalid endpoint name {args.name!r}: letters, digits, '_', '.', '-', at most 64",
            code=2,
        )
    from asyncgate.models.keys import KeyStore
    from asyncgate.models.webhooks import DuplicateEndpointName

    problem = url_problem(args.url, allow_http=settings.webhooks.allow_http)
    if problem is not None:
        return _fail(problem, code=2)
    owner = None
    if args.key is not None:
        owner = await KeyStore(db).id_of(args.key)
        if owner is None:
            return _fail(f"no active virtual key named {args.key!r}")
    events = [Event(e) for e in args.events] if args.events else list(JOB_EVENTS)
    secret = new_secret()
    try:
        await store.create_endpoint(args.name, args.url, events, owner, secret)
    except DuplicateEndpointName:
        return _fail(f"a webhook endpoint named {args.name!r} exists already")
    print(secret)
    print(f"webhook endpoint {args.name!r} created; its secret is shown only now", file=sys.stderr)
    return 0


async def _test(settings: Settings, db: Database, store: WebhookStore, name: str) -> int:
    from asyncgate.metrics import Metrics
    from asyncgate.worker.loop import worker_id
    from asyncgate.worker.webhooks import Deliverer, Sender, client_session

    if store.box is None:
        return _fail("webhooks need webhooks.secret_key (ASYNCGATE_WEBHOOKS_SECRET_KEY)", code=2)
    delivery_id = await store.create_test_delivery(name)
    if delivery_id is None:
        return _fail(f"no webhook endpoint named {name!r}")
    session, resolver = client_session(settings.webhooks)
    async with session:
        sender = Sender(session, store.box, settings.webhooks, resolver)
        deliverer = Deliverer(
            store,
            sender,
            config=settings.webhooks,
            metrics=Metrics(),
            owner=worker_id(),
            public_url=settings.server.public_url,
        )
        attempt = await deliverer.deliver_now(delivery_id)
    if attempt is None:
        return _fail(
            f"{message_id(delivery_id)} was not sent: the endpoint is disabled, or a worker "
            "took it first (see webhooks deliveries)"
        )
    status = attempt.status_code if attempt.status_code is not None else "no answer"
    line = f"{message_id(delivery_id)} {attempt.outcome.value}: {status} in {attempt.latency_ms} ms"
    print(line + (f" ({attempt.error})" if attempt.error else ""))
    return 0 if attempt.outcome.value == "delivered" else 1


async def _deliveries(store: WebhookStore, args: argparse.Namespace) -> int:
    found = await store.deliveries(
        endpoint=args.endpoint,
        state=None if args.outcome is None else DeliveryState(args.outcome),
        since=args.since,
        limit=args.limit,
    )
    print(table(_HEADER, [_row(d) for d in found]))
    return 0


_HEADER = ("ID", "ENDPOINT", "EVENT", "JOB", "STATE", "ATTEMPTS", "CREATED", "LAST")


def _row(d: DeliveryInfo) -> tuple[str, ...]:
    last = "-"
    if d.last_status_code is not None or d.last_error:
        last = " ".join(str(x) for x in (d.last_status_code, d.last_error) if x)
    return (
        message_id(d.id),
        d.endpoint,
        d.event.value,
        str(d.job_id or "-"),
        d.state.value,
        str(d.attempts),
        f"{d.created_at:%Y-%m-%d %H:%M:%S}",
        last,
    )


async def _redeliver(store: WebhookStore, raw_id: str) -> int:
    try:
        delivery_id = parse_message_id(raw_id)
    except ValueError:
        return _fail(f"{raw_id!r} is not a delivery id (msg_ and 32 hex digits)", code=2)
    if await store.redeliver(delivery_id):
        print(f"{message_id(delivery_id)} queued again")
        return 0
    if await store.delivery(delivery_id) is None:
        return _fail(f"no webhook delivery {raw_id}")
    return _fail(f"{message_id(delivery_id)} is still queued or in flight")


def _fail(message: str, *, code: int = 1) -> int:
    print(f"asyncgate: {message}", file=sys.stderr)
    return code
