"""Loading settings from a TOML file and ``ASYNCGATE_*`` variables, and refusing bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncgate.config import ConfigError, Secret, Settings, load_settings

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


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.database.url is None
    assert settings.providers == {}
    assert settings.jobs.default_ttl == 3600
    assert settings.database.startup_timeout_seconds == 60.0


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
        ("", {"ASYNCGATE_WORKER_CONCURENCY": "5"}, "concurency"),
        ("", {"ASYNCGATE_WORKERS_CONCURRENCY": "5"}, "ASYNCGATE_WORKERS_CONCURRENCY"),
        ("", {"ASYNCGATE_SERVER_PORT": "eighty"}, "server.port"),
        ("", {"ASYNCGATE_PROVIDERS_OPENAI_KEY": "x"}, "ASYNCGATE_PROVIDERS_OPENAI_KEY"),
        ("[providers.openai]\ntimeout = 5\n", {}, "openai"),
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
        ("[jobs]\nmax_wait_seconds = -1\n", {}, "jobs.max_wait_seconds"),
        ("[jobs]\nmax_wait_seconds = 3601\n", {}, "jobs.max_wait_seconds"),
        ("", {"ASYNCGATE_JOBS_MAX_WAIT_SECONDS": "1.5"}, "jobs.max_wait_seconds"),
        ("[database]\nstartup_timeout_seconds = -1\n", {}, "database.startup_timeout_seconds"),
        ("", {"ASYNCGATE_DATABASE_STARTUP_TIMEOUT_SECONDS": "soon"}, "startup_timeout_seconds"),
        ("[database]\nconnect_timeout = 0\n", {}, "database.connect_timeout"),
        ("[database]\npool_size = 0\n", {}, "database.pool_size"),
        ("[worker\nconcurrency = 1\n", {}, "cannot read config file"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ=env)
    assert named in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        load_settings(missing, environ={})


def test_max_wait_seconds_defaults_to_a_minute_and_is_read_from_the_environment(
    tmp_path: Path,
) -> None:
    assert load_settings(write(tmp_path, ""), environ={}).jobs.max_wait_seconds == 60
    env = {"ASYNCGATE_JOBS_MAX_WAIT_SECONDS": "5"}
    assert load_settings(write(tmp_path, ""), environ=env).jobs.max_wait_seconds == 5
