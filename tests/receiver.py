"""A real webhook receiver for tests, the benchmark and the soak run: an aiohttp server on a
loopback port that records every delivery and answers as it is told.

``answers`` is a list of plans consumed one per request, then ``default`` for the rest. A plan
is a status code, or a dict: ``{"status": 429, "headers": {"Retry-After": "1"}}``,
``{"delay": 2.0}`` (sleep before answering) or ``{"drop": True}`` (close the connection
without an answer). ``fail_ratio`` answers 500 to that share of requests (a seeded draw).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

Plan = int | dict[str, Any]


@dataclass
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float
    """``time.time()`` at arrival."""
    answered: int | None = None

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    answers: list[Plan] = field(default_factory=list)
    default: Plan = 200
    fail_ratio: float = 0.0
    seed: int = 7
    deliveries: list[Delivery] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "receiver did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def for_job(self, job_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.json.get("data", {}).get("job_id") == job_id]

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _next_plan(self) -> Plan:
        with self._lock:
            if self.answers:
                return self.answers.pop(0)
            if self.fail_ratio and self._random.random() < self.fail_ratio:
                return 500
            return self.default

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        delivery = Delivery(request.path, dict(request.headers), await request.read(), time.time())
        with self._lock:
            self.deliveries.append(delivery)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            plan = self._next_plan()
            if isinstance(plan, int):
                plan = {"status": plan}
            if plan.get("delay"):
                await asyncio.sleep(plan["delay"])
            if plan.get("drop"):
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
            status = plan.get("status", 200)
            delivery.answered = status
            return web.Response(status=status, headers=plan.get("headers"), text="ok")
        finally:
            with self._lock:
                self.in_flight -= 1
