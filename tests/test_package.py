"""The distribution as users install it: a wheel in a new virtual environment outside the
repository runs a job end to end, with its spec and migrations read from inside the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, wait_for
from tests.launch import ROOT
from tests.processes import UPSTREAM_KEY_ENV, Processes, child_environment
from tests.upstream import UpstreamThread

pytestmark = pytest.mark.package


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the freshly built wheel installed; returns its bin folder."""
    where = tmp_path_factory.mktemp("package")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(where), str(ROOT)],
        cwd=where,
    )
    [wheel] = where.glob("asyncgate-*.whl")
    _run([sys.executable, "-m", "venv", str(where / "venv")], cwd=where)
    _run([str(where / "venv" / "bin" / "pip"), "install", "--quiet", str(wheel)], cwd=where)
    return where / "venv" / "bin"


def test_the_wheel_claims_no_generic_top_level_names(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u, asyncgate.resources as r\n"
        "names = ('handlers', 'models', 'worker', 'spec', 'migrations')\n"
        "print([n for n in names if u.find_spec(n)])\n"
        "print(r.spec_dir() / 'openapi.yaml')\n"
        "print(r.migrations_dir() / 'env.py')\n"
    )
    found, spec, env = _run([str(installed / "python"), "-c", probe], cwd=tmp_path).splitlines()
    assert found == "[]"
    for path in (spec, env):
        assert "site-packages/asyncgate/" in path and Path(path).is_file()
        assert not Path(path).is_relative_to(ROOT)


def test_installed_gateway_runs_a_job_end_to_end(
    installed: Path, tmp_path: Path, database_url: str, upstream: UpstreamThread
) -> None:
    port = free_port()
    config = Processes(tmp_path, database_url, upstream.url).config(server={"port": port})
    env = child_environment()
    env.pop("PYTHONPATH", None)
    assert UPSTREAM_KEY_ENV in env
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(installed / "asyncgate"), "--config", str(config), "serve"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return requests.get(f"{base}/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=60)
        body = {"model": "fake/ok", "messages": [{"role": "user", "content": "from a wheel"}]}
        accepted = requests.post(f"{base}/v1/async/chat/completions", json=body, timeout=5)
        assert accepted.status_code == 202, accepted.text
        location = accepted.headers["Location"]

        def finished() -> dict | None:
            job = requests.get(base + location, timeout=5).json()
            return job if job["status"] in ("completed", "failed") else None

        job = wait_for(finished, timeout=30)
        assert job["status"] == "completed", job
        assert job["result"]["choices"][0]["message"]["content"] == "from a wheel"
        assert requests.get(f"{base}/openapi.json", timeout=5).json()["paths"]
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
        log.close()
