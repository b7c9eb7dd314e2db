"""Long-polls held outside the framework: what a waiting request keeps alive is one small frame.

A handler that has to hold its answer (``Prefer: wait=N`` on an unfinished job) does everything
a request needs (validation, key, first read) and returns its answer as it stands now, after
handing :func:`defer` the coroutine that makes the final answer. :class:`HoldMiddleware`, the
outermost layer, keeps that first answer back, lets the whole Connexion stack return (its
frames, scopes and validators are freed), awaits the final answer with only its own frame
alive, and sends that instead. Should the final answer fail (say, the database went away
meanwhile), the first answer is sent: it was a correct answer when it was made.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import cast

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asyncgate.handlers.context import current_scope
from asyncgate.models.database import DatabaseUnavailable

log = logging.getLogger("asyncgate.jobs")

Answer = Callable[[Receive], Awaitable[Response]]
"""Makes the final answer; given the request's ``receive``, to notice a client leaving."""
_SLOT = "asyncgate.hold"


def defer(answer: Answer) -> bool:
    """Have the current request answered by ``answer`` once the framework has returned; False
    when no :class:`HoldMiddleware` serves the request (the caller then waits itself)."""
    slot = current_scope().get(_SLOT)
    if slot is None:
        return False
    cast(list[Answer], slot).append(answer)
    return True


class HoldMiddleware:
    """Sends a deferred request's final answer in place of the one its handler returned."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot: list[Answer] = []
        held: list[Message] = []

        async def send_or_hold(message: Message) -> None:
            if slot:
                held.append(message)
            else:
                await send(message)

        await self.app({**scope, _SLOT: slot}, receive, send_or_hold)
        if not slot:
            return
        try:
            response = await slot[0](receive)
        except Exception as exc:
            if isinstance(exc, DatabaseUnavailable):
                log.warning("a held answer could not be completed; the first one is sent")
            else:
                log.exception("a held answer failed; the first one is sent")
            for message in held:
                await send(message)
            return
        await response(scope, receive, send)
