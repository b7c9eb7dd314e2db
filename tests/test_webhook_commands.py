"""``asyncgate webhooks ...`` run as real processes against the test database and a real
receiver."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.receiver import Receiver
from tests.test_cli import asyncgate
from tests.test_webhooks import SECRET_KEY

Sql = Callable[..., list[tuple[Any, ...]]]


def webhook_config(tmp_path: Path, database_url: str, **extra: str) -> Path:
    path = tmp_path / "asyncgate.toml"
    lines = [
        'log_level = "WARNING"',
        "[database]",
        f"url = {database_url!r}",
        "[webhooks]",
        f"secret_key = {SECRET_KEY!r}",
        "allow_http = true",
        "allow_private_networks = true",
        *(f"{k} = {v}" for k, v in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def rows(stdout: str) -> list[list[str]]:
    return [re.split(r" {2,}", line) for line in stdout.splitlines()[1:]]


def test_create_list_disable_enable_and_rotate(tmp_path: Path, database_url: str) -> None:
    config = webhook_config(tmp_path, database_url)
    created = asyncgate(config, "webhooks", "create", "billing", "https://hooks.example.com/x")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("whsec_") and "shown only now" in created.stderr

    again = asyncgate(config, "webhooks", "create", "billing", "https://hooks.example.com/x")
    assert again.returncode == 1 and "exists already" in again.stderr
    bad = asyncgate(config, "webhooks", "create", "b", "ftp://hooks.example.com/")
    assert bad.returncode == 2 and "https://" in bad.stderr

    listed = asyncgate(config, "webhooks", "list")
    assert listed.stdout.splitlines()[0].split() == ["NAME", "URL", "EVENTS", "KEY", "STATE"]
    assert rows(listed.stdout) == [
        ["billing", "https://hooks.example.com/x", "completed,failed,cancelled", "-", "active"]
    ]
    assert secret not in listed.stdout

    assert asyncgate(config, "webhooks", "disable", "billing").returncode == 0
    assert "disabled" in rows(asyncgate(config, "webhooks", "list").stdout)[0][4]
    assert asyncgate(config, "webhooks", "enable", "billing").returncode == 0
    assert asyncgate(config, "webhooks", "disable", "nope").returncode == 1

    rotated = asyncgate(config, "webhooks", "rotate-secret", "billing")
    assert rotated.returncode == 0 and rotated.stdout.strip() not in ("", secret)


def test_without_a_secret_key_endpoints_cannot_be_created(
    tmp_path: Path, database_url: str
) -> None:
    config = tmp_path / "plain.toml"
    config.write_text(f'log_level = "WARNING"\n[database]\nurl = {database_url!r}\n')
    result = asyncgate(config, "webhooks", "create", "x", "https://hooks.example.com/")
    assert result.returncode == 2 and "webhooks.secret_key" in result.stderr


def test_test_sends_a_signed_event_and_deliveries_lists_it(
    tmp_path: Path, database_url: str
) -> None:
    config = webhook_config(tmp_path, database_url)
    with Receiver(answers=[200, 503]) as receiver:
        secret = asyncgate(config, "webhooks", "create", "hook", receiver.url).stdout.strip()
        sent = asyncgate(config, "webhooks", "test", "hook")
        assert sent.returncode == 0, sent.stderr
        assert re.match(r"^msg_[0-9a-f]{32} delivered: 200 in \d+ ms$", sent.stdout.strip())
        [delivery] = receiver.deliveries
        assert Webhook(secret).verify(delivery.body, delivery.headers)["event"] == "webhook.test"

        failed = asyncgate(config, "webhooks", "test", "hook")
        assert failed.returncode == 1 and "failed: 503" in failed.stdout

        listed = asyncgate(config, "webhooks", "deliveries", "--endpoint", "hook", "--since", "1h")
        header = listed.stdout.splitlines()[0]
        assert header.split()[:5] == ["ID", "ENDPOINT", "EVENT", "JOB", "STATE"]
        assert [r[4] for r in rows(listed.stdout)] == ["failed", "delivered"]
        only = asyncgate(config, "webhooks", "deliveries", "--outcome", "failed")
        [failed_row] = rows(only.stdout)

        redelivered = asyncgate(config, "webhooks", "redeliver", failed_row[0])
        assert redelivered.returncode == 0 and "queued again" in redelivered.stdout
        assert asyncgate(config, "webhooks", "redeliver", failed_row[0]).returncode == 1
        unknown = asyncgate(config, "webhooks", "redeliver", "msg_" + "0" * 32)
        assert unknown.returncode == 1 and "no webhook delivery" in unknown.stderr
        pending = asyncgate(config, "webhooks", "deliveries", "--outcome", "pending")
        assert [r[0] for r in rows(pending.stdout)] == [failed_row[0]]
