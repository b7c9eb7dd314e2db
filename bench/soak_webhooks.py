"""The soak run's webhooks: every job names an endpoint whose receiver fails 30% of attempts,
and afterwards every finished job's event must have been delivered at least once, each event
under one ``webhook-id`` however often it was sent."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests import launch
from tests.receiver import Receiver

WEBHOOK = "soak"
WEBHOOK_HEADER = "x-bf-async-webhook"
FAIL_RATIO = 0.3
SETTINGS: dict[str, Any] = {
    "secret_key": "soak-webhook-secret-key-0123456789",
    "allow_http": True,
    "allow_private_networks": True,
    "timeout_seconds": 2.0,
    "retry_initial_seconds": 0.2,
    "retry_max_seconds": 2.0,
    "retry_for_seconds": 3600.0,
    "poll_seconds": 0.5,
}


def start_receiver(seed: int) -> Receiver:
    """The receiver, failing ``FAIL_RATIO`` of attempts with 500 (a seeded draw)."""
    return Receiver(fail_ratio=FAIL_RATIO, seed=seed).start()


def create_endpoint(config: Path, receiver: Receiver, env: dict[str, str]) -> None:
    done = subprocess.run(
        launch.gateway_argv(config, "webhooks", "create", WEBHOOK, receiver.url),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"webhooks create: {done.stderr.strip()}")


async def wait_delivered(receiver: Receiver, job_ids: set[str], max_wait: float) -> bool:
    """Until every job in ``job_ids`` has a delivery the receiver took (2xx), or ``max_wait``."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        if not job_ids - _delivered(receiver):
            return True
        await asyncio.sleep(0.5)
    return False


def _delivered(receiver: Receiver) -> set[str]:
    return {
        d.json["data"]["job_id"]
        for d in list(receiver.deliveries)
        if d.answered is not None and 200 <= d.answered < 300
    }


def figures(receiver: Receiver, job_ids: set[str]) -> dict[str, Any]:
    """Delivered, missing, duplicates, and events sent under more than one webhook-id."""
    ids_by_job: dict[str, set[str]] = defaultdict(set)
    taken: dict[str, int] = defaultdict(int)
    attempts = list(receiver.deliveries)
    for d in attempts:
        job = d.json["data"]["job_id"]
        ids_by_job[job].add(d.headers["webhook-id"])
        if d.answered is not None and 200 <= d.answered < 300:
            taken[job] += 1
    delivered = {job for job, n in taken.items() if n}
    return {
        "jobs_expecting_an_event": len(job_ids),
        "delivered": len(delivered & job_ids),
        "missing": len(job_ids - delivered),
        "attempts_received": len(attempts),
        "refused_by_receiver": sum(1 for d in attempts if d.answered == 500),
        "delivered_more_than_once": sum(1 for n in taken.values() if n > 1),
        "events_with_several_ids": sum(1 for ids in ids_by_job.values() if len(ids) > 1),
        "fail_ratio": FAIL_RATIO,
    }
