"""Loading settings from a TOML file and ``ASYNCGATE_*`` variables, and refusing bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncgate import local
from asyncgate.config import ConfigError, Secret, Settings, load_settings, unknown_environment

TOML = """
log_level = "DEBUG"

[server]
port = 9000

[database]
url = "postgresql://app:file-password@db.internal/jobs"

[worker]
concurrency = 50
lease_seconds = 20

[jobs]
default_ttl = 120

[providers.openai]
base_url = "https://api.openai.example/v1/"
api_key_env = "OPENAI_TEST_KEY"
timeout = 30

[providers.local-llm]
base_url = "http://127.0.0.1:8000/v1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "asyncgate.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "available", lambda: False)
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.database.url is None
    assert settings.providers == {}
    assert settings.jobs.default_ttl == 3600
    assert settings.jobs.idempotency_window_seconds == 86400
    assert settings.database.startup_timeout_seconds == 60.0


def test_local_provider_is_the_default_when_the_extra_is_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(local, "available", lambda: True)
    provider = load_settings(environ={}).providers["local"]
    assert (provider.type, provider.local, provider.processes) == ("local", True, 1)
    configured = load_settings(write(tmp_path, TOML), environ={"OPENAI_TEST_KEY": "sk"})
    assert "local" not in configured.providers


def test_local_provider_settings(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.mine]\ntype = "local"\nprocesses = 2\n')
    settings = load_settings(path, environ={"ASYNCGATE_PROVIDERS_MINE_TIMEOUT": "9"})
    mine = settings.providers["mine"]
    assert (mine.type, mine.processes, mine.base_url, mine.api_key) == ("local", 2, "", None)
    assert mine.timeout == 9.0


def test_file_then_environment(tmp_path: Path) -> None:
    env = {
        "OPENAI_TEST_KEY": "sk-openai-from-env",
        "ASYNCGATE_WORKER_CONCURRENCY": "7",
        "ASYNCGATE_WORKER_RENEW_SECONDS": "2.5",
        "ASYNCGATE_AUTH_REQUIRED": "yes",
        "ASYNCGATE_JOBS_MAX_TTL": "600",
        "ASYNCGATE_PROVIDERS_LOCAL-LLM_TIMEOUT": "3",
        "ASYNCGATE_PROVIDERS_VLLM_BASE_URL": "http://10.0.0.5:8000/v1/",
        "ASYNCGATE_PROVIDERS_VLLM_MAX_CONCURRENCY": "8",
        "ASYNCGATE_LOG_LEVEL": "WARNING",
        "UNRELATED": "ignored",
    }
    settings = load_settings(write(tmp_path, TOML), environ=env)
    assert settings.server.port == 9000
    assert settings.worker.concurrency == 7
    assert settings.worker.lease_seconds == 20.0
    assert settings.worker.renew_seconds == 2.5
    assert settings.auth.required is True
    assert settings.jobs.default_ttl == 120
    assert settings.jobs.max_ttl == 600
    assert settings.log_level == "WARNING"
    assert settings.database.url == Secret("postgresql://app:file-password@db.internal/jobs")

    assert set(settings.providers) == {"openai", "local-llm", "vllm"}
    openai = settings.providers["openai"]
    assert openai.base_url == "https://api.openai.example/v1"
    assert openai.timeout == 30.0
    assert openai.api_key is not None and openai.api_key.reveal() == "sk-openai-from-env"
    local = settings.providers["local-llm"]
    assert (local.timeout, local.api_key) == (3.0, None)
    vllm = settings.providers["vllm"]
    assert (vllm.base_url, vllm.max_concurrency) == ("http://10.0.0.5:8000/v1", 8)


def test_config_file_named_by_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker]\nconcurrency = 11\n")
    settings = load_settings(environ={"ASYNCGATE_CONFIG": str(path)})
    assert settings.worker.concurrency == 11


def test_database_url_fallback() -> None:
    fallback = load_settings(environ={"DATABASE_URL": "postgresql://fallback/db"})
    assert fallback.database.url == Secret("postgresql://fallback/db")
    both = load_settings(
        environ={
            "DATABASE_URL": "postgresql://fallback/db",
            "ASYNCGATE_DATABASE_URL": "postgresql://preferred/db",
        }
    )
    assert both.database.url == Secret("postgresql://preferred/db")


def test_listen_url_from_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[database]\nurl = 'postgresql://pooler:6432/jobs'\n"
        "listen_url = 'postgresql://db:5432/jobs'\n",
    )
    database = load_settings(path, environ={}).database
    assert database.listen_url == Secret("postgresql://db:5432/jobs")
    assert "db:5432" not in repr(database)
    env = {
        "ASYNCGATE_DATABASE_URL": "postgresql://pooler:6432/jobs",
        "ASYNCGATE_DATABASE_LISTEN_URL": "postgres://direct:5432/jobs",
    }
    assert load_settings(environ=env).database.listen_url == Secret("postgres://direct:5432/jobs")
    assert load_settings(environ={}).database.listen_url is None


def test_secrets_never_show(tmp_path: Path) -> None:
    env = {
        "OPENAI_TEST_KEY": "sk-openai-very-secret",
        "ASYNCGATE_DATABASE_URL": "postgresql://app:db-very-secret@db/jobs",
    }
    settings = load_settings(write(tmp_path, TOML), environ=env)
    for shown in (repr(settings), str(settings), repr(settings.providers), str(settings.database)):
        assert "very-secret" not in shown
        assert "file-password" not in shown
    assert "**********" in repr(settings.providers["openai"])
    assert settings.providers["openai"].api_key == Secret("sk-openai-very-secret")
    assert f"{settings.database.url}" == "Secret('**********')"


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ("[worker]\nconcurency = 5\n", {}, "concurency"),
        ("[wokrer]\nconcurrency = 5\n", {}, "wokrer"),
        ("[worker]\nconcurrency = 'many'\n", {}, "worker.concurrency"),
        ("[worker]\nconcurrency = 2.5\n", {}, "worker.concurrency"),
        ("[worker]\nlease_seconds = true\n", {}, "worker.lease_seconds"),
        ("[auth]\nrequired = 'maybe'\n", {}, "auth.required"),
        ("worker = 5\n", {}, "[worker]"),
        ("", {"ASYNCGATE_WORKER_CONCURRENCY": "lots"}, "worker.concurrency"),
        ("", {"ASYNCGATE_SERVER_PORT": "eighty"}, "server.port"),
        ("[server]\nport = 99999\n", {}, "server.port"),
        ("[server]\nport = 0\n", {}, "server.port"),
        ("[limits]\nmax_json_bytes = -1\n", {}, "limits.max_json_bytes"),
        ("[limits]\nmax_upload_bytes = 0\n", {}, "limits.max_upload_bytes"),
        ("[limits]\nmax_files = -2\n", {}, "limits.max_files"),
        ("[sweeper]\nbatch = 0\n", {}, "sweeper.batch"),
        ("[sweeper]\npause_seconds = -1\n", {}, "sweeper.pause_seconds"),
        ("[sweeper]\npause_seconds = 61\n", {}, "sweeper.pause_seconds"),
        ("[providers.openai]\ntimeout = 5\n", {}, "openai"),
        ("[providers.x]\ntype = 'llama'\n", {}, "providers.x.type"),
        ("[providers.x]\ntype = 'local'\nbase_url = 'http://x'\n", {}, "takes no base_url"),
        ("[providers.x]\nbase_url = 'http://x'\nprocesses = 2\n", {}, "takes no processes"),
        ("[providers.x]\ntype = 'local'\nprocesses = 0\n", {}, "providers.x.processes"),
        ("[providers.openai]\nbase_url = 'http://x'\napi_key = 'sk'\n", {}, "api_key"),
        ("[providers.Open_AI]\nbase_url = 'http://x'\n", {}, "Open_AI"),
        ("[providers.openai]\nbase_url = 'ftp://x'\n", {}, "providers.openai.base_url"),
        ("[providers.openai]\nbase_url = 'http://x'\ntimeout = 0\n", {}, "providers.openai"),
        (
            "[providers.openai]\nbase_url = 'http://x'\napi_key_env = 'NOT_SET_ANYWHERE'\n",
            {},
            "NOT_SET_ANYWHERE",
        ),
        (
            "[providers.openai]\nbase_url = 'http://x'\napi_key_env = 'EMPTY_KEY'\n",
            {"EMPTY_KEY": ""},
            "EMPTY_KEY",
        ),
        ("[worker]\nlease_seconds = 4\nrenew_seconds = 3\n", {}, "worker.renew_seconds"),
        ("[worker]\nmax_attempts = 0\n", {}, "worker.max_attempts"),
        ("[jobs]\ndefault_ttl = 700\nmax_ttl = 600\n", {}, "jobs.default_ttl"),
        ("[jobs]\ndefault_ttl = 0\n", {}, "jobs.default_ttl"),
        ("[jobs]\nidempotency_window_seconds = 0\n", {}, "jobs.idempotency_window_seconds"),
        ("[jobs]\nidempotency_window_seconds = 31536001\n", {}, "idempotency_window_seconds"),
        ("", {"ASYNCGATE_JOBS_IDEMPOTENCY_WINDOW_SECONDS": "a day"}, "idempotency_window"),
        ("[jobs]\nmax_wait_seconds = -1\n", {}, "jobs.max_wait_seconds"),
        ("[jobs]\nmax_wait_seconds = 3601\n", {}, "jobs.max_wait_seconds"),
        ("", {"ASYNCGATE_JOBS_MAX_WAIT_SECONDS": "1.5"}, "jobs.max_wait_seconds"),
        ("[jobs]\nsync_wait_seconds = 0\n", {}, "jobs.sync_wait_seconds"),
        ("[jobs]\nsync_wait_seconds = 3601\n", {}, "jobs.sync_wait_seconds"),
        ("", {"ASYNCGATE_JOBS_SYNC_WAIT_SECONDS": "ten"}, "jobs.sync_wait_seconds"),
        ("[database]\nstartup_timeout_seconds = -1\n", {}, "database.startup_timeout_seconds"),
        ("", {"ASYNCGATE_DATABASE_STARTUP_TIMEOUT_SECONDS": "soon"}, "startup_timeout_seconds"),
        ("[database]\nconnect_timeout = 0\n", {}, "database.connect_timeout"),
        ("[database]\npool_size = 0\n", {}, "database.pool_size"),
        ("[database]\ngroup_commit_max_bytes = 0\n", {}, "database.group_commit_max_bytes"),
        (
            "[database]\ngroup_commit_max_bytes = 268435457\n",
            {},
            "database.group_commit_max_bytes",
        ),
        ("[database]\nlisten_url = 'postgresql://db/jobs'\n", {}, "database.listen_url needs"),
        (
            "[database]\nurl = 'postgresql://pooler/jobs'\nlisten_url = 'db:5432'\n",
            {},
            "database.listen_url must be",
        ),
        ("", {"ASYNCGATE_DATABASE_LISTEN_URL": "postgresql://db/jobs"}, "database.listen_url"),
        ("[worker\nconcurrency = 1\n", {}, "cannot read config file"),
        ("[server]\nheader_timeout_seconds = 0\n", {}, "server.header_timeout_seconds"),
        ("[server]\nidle_timeout_seconds = -1.5\n", {}, "server.idle_timeout_seconds"),
        ("[server]\nmax_header_bytes = 0\n", {}, "server.max_header_bytes"),
        ("[server]\nmax_headers = -3\n", {}, "server.max_headers"),
        ("[server]\nmax_connections = 0\n", {}, "server.max_connections"),
        ("[server]\nprocesses = 0\n", {}, "server.processes"),
        ("[server]\nserve_processes = -1\n", {}, "server.serve_processes"),
        ("[server]\nserve_worker_nice = 20\n", {}, "server.serve_worker_nice"),
        ("", {"ASYNCGATE_SERVER_SERVE_WORKER_NICE": "-1"}, "server.serve_worker_nice"),
        ("", {"ASYNCGATE_SERVER_SERVE_WORKER_PROCESS": "maybe"}, "serve_worker_process"),
        ("", {"ASYNCGATE_SERVER_MAX_CONNECTIONS": "0"}, "server.max_connections"),
        ("", {"ASYNCGATE_SERVER_IDLE_TIMEOUT_SECONDS": "soon"}, "server.idle_timeout_seconds"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ=env)
    assert named in str(caught.value)


def test_connection_bounds_from_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nmax_headers = 50\nheader_timeout_seconds = 2.5\n")
    env = {
        "ASYNCGATE_SERVER_IDLE_TIMEOUT_SECONDS": "1.5",
        "ASYNCGATE_SERVER_MAX_HEADER_BYTES": "8192",
        "ASYNCGATE_SERVER_MAX_CONNECTIONS": "300",
        "ASYNCGATE_SERVER_MAX_HEADERS": "60",
    }
    server = load_settings(path, environ=env).server
    assert server.header_timeout_seconds == 2.5
    assert server.idle_timeout_seconds == 1.5
    assert server.max_header_bytes == 8192
    assert server.max_connections == 300
    assert server.max_headers == 60


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        load_settings(missing, environ={})


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("ASYNCGATE_WORKER_CONCURENCY", "did you mean ASYNCGATE_WORKER_CONCURRENCY?"),
        ("ASYNCGATE_WORKERS_CONCURRENCY", "did you mean ASYNCGATE_WORKER_CONCURRENCY?"),
        ("ASYNCGATE_SERVER_PROT", "did you mean ASYNCGATE_SERVER_PORT?"),
        ("ASYNCGATE_PROVIDERS_OPENAI_KEY", "KEY one of BASE_URL, API_KEY_ENV"),
        ("ASYNCGATE_SOMETHING_ELSE", "ignored"),
    ],
)
def test_unknown_environment_variables_warn_and_are_ignored(name: str, says: str) -> None:
    env = {name: "5", "ASYNCGATE_WORKER_CONCURRENCY": "7", "ASYNCGATE_TEST_ANYTHING": "x"}
    settings = load_settings(environ=env)
    assert settings.worker.concurrency == 7
    [warning] = unknown_environment(env)
    assert name in warning and says in warning
    assert unknown_environment({"ASYNCGATE_WORKER_CONCURRENCY": "7"}) == []


def test_max_wait_seconds_defaults_to_a_minute_and_is_read_from_the_environment(
    tmp_path: Path,
) -> None:
    assert load_settings(write(tmp_path, ""), environ={}).jobs.max_wait_seconds == 60
    env = {"ASYNCGATE_JOBS_MAX_WAIT_SECONDS": "5"}
    assert load_settings(write(tmp_path, ""), environ=env).jobs.max_wait_seconds == 5


def test_sync_wait_seconds_defaults_to_ten_minutes_and_is_read_from_the_environment(
    tmp_path: Path,
) -> None:
    assert load_settings(write(tmp_path, ""), environ={}).jobs.sync_wait_seconds == 600
    env = {"ASYNCGATE_JOBS_SYNC_WAIT_SECONDS": "30"}
    assert load_settings(write(tmp_path, ""), environ=env).jobs.sync_wait_seconds == 30
