"""The import contract that keeps the layers apart (checked on the source, not at run time).

The ``asyncgate`` package holds two sorts of module: domain modules (what a kind, a status, an
error, a setting is), which import no layer, and the composition root, which builds the app and
the worker from the layers. Every module there must be one or the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATABASE_DRIVERS = {"psycopg", "psycopg_pool", "sqlalchemy", "alembic"}
LAYERS = ("handlers", "models", "worker")

DOMAIN = {
    "__init__",
    "config",
    "embedded",
    "ids",
    "errors",
    "kinds",
    "local",
    "logs",
    "metrics",
    "resources",
    "routing",
    "status",
    "text",
    "trace",
    "webhooks",
}
COMPOSITION = {
    "__main__",
    "app",
    "cli",
    "connections",
    "dba",
    "dba_args",
    "dba_output",
    "runtime",
    "server",
    "services",
    "supervisor",
    "webhook_commands",
}

# package -> top-level modules it must never import
FORBIDDEN = {
    "handlers": DATABASE_DRIVERS | {"worker", "aiohttp"},
    "worker": DATABASE_DRIVERS | {"handlers", "connexion", "starlette"},
    "models": {"handlers", "worker", "connexion", "starlette", "aiohttp"},
}
# What the store may take from the error module: the body builder, never an HTTP exception.
MODELS_MAY_USE_FROM_ERRORS = {"error_body", "extra_fields"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _layer(module: str) -> str:
    """The top-level name of ``module``; ``asyncgate.<layer>`` counts as ``<layer>`` and
    ``asyncgate.<module>`` as ``asyncgate.<module>``."""
    parts = module.split(".")
    if parts[0] == "asyncgate" and len(parts) > 1:
        return parts[1] if parts[1] in LAYERS else f"asyncgate.{parts[1]}"
    return parts[0]


def imported_modules(path: Path) -> set[str]:
    return {_layer(module) for module, _ in _imports(path)}


def _sources(folder: str) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no modules found in {folder}/"
    return files


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports(package: str) -> None:
    forbidden = FORBIDDEN[package] | {f"asyncgate.{m}" for m in COMPOSITION - {"services"}}
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(package)
        for name in imported_modules(path)
        if name in forbidden
    ]
    assert violations == []


def test_every_asyncgate_module_is_domain_or_composition() -> None:
    names = {path.stem for path in (ROOT / "asyncgate").glob("*.py")}
    assert names - DOMAIN - COMPOSITION == set()
    assert DOMAIN & COMPOSITION == set()


@pytest.mark.parametrize("module", sorted(DOMAIN))
def test_domain_modules_import_no_layer(module: str) -> None:
    names = imported_modules(ROOT / "asyncgate" / f"{module}.py")
    layers = {*LAYERS, "connexion", "starlette", "psycopg", "aiohttp", "sqlalchemy"}
    composition = {f"asyncgate.{m}" for m in COMPOSITION}
    assert names & (layers | composition) == set()


def test_the_store_raises_no_http_errors() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {names}"
        for path in _sources("models")
        for module, names in _imports(path)
        if module == "asyncgate.errors" and not set(names) <= MODELS_MAY_USE_FROM_ERRORS
    ]
    assert offenders == []


def test_all_sql_lives_in_models() -> None:
    """No module outside models/ and migrations/ spells out a SQL statement."""
    keywords = ("SELECT ", "INSERT INTO", "UPDATE async_jobs", "DELETE FROM")
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("asyncgate", "handlers", "worker")
        for path in (ROOT / package).rglob("*.py")
        if any(k in path.read_text() for k in keywords)
    ]
    assert offenders == []
