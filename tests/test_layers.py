"""The import contract that keeps the layers apart (checked on the source, not at run time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATABASE_DRIVERS = {"psycopg", "psycopg_pool", "sqlalchemy", "alembic"}

# package -> top-level modules it must never import
FORBIDDEN = {
    "handlers": DATABASE_DRIVERS | {"worker", "aiohttp"},
    "worker": DATABASE_DRIVERS | {"handlers", "connexion", "starlette"},
    "models": {"handlers", "worker", "connexion", "starlette", "aiohttp"},
}
# domain modules of the asyncgate package that everything may import: they import no layer
DOMAIN = ["config", "kinds", "errors", "routing"]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of what ``path`` imports; ``asyncgate.<layer>`` counts as ``<layer>``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {_layer(name) for name in names}


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "asyncgate" and len(parts) > 1 and parts[1] in FORBIDDEN:
        return parts[1]
    return parts[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in imported_modules(path)
        if name in FORBIDDEN[package]
    ]
    assert violations == []


@pytest.mark.parametrize("module", DOMAIN)
def test_domain_modules_import_no_layer(module: str) -> None:
    names = imported_modules(ROOT / "asyncgate" / f"{module}.py")
    layers = {"handlers", "models", "worker", "connexion", "psycopg", "aiohttp"}
    assert names & layers == set()


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
