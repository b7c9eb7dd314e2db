"""Where the files that ship inside the package are: the spec and the migrations.

Both are found through :mod:`importlib.resources`, so an installed wheel, an editable install
and a source checkout all read the copy that belongs to the code that runs.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _folder(package: str) -> Path:
    folder = files(package)
    if not isinstance(folder, Path):  # pragma: no cover - pip never installs zipped packages
        raise RuntimeError(f"{package} must be installed as files on disk, not inside an archive")
    return folder


def spec_dir() -> Path:
    """The folder holding ``openapi.yaml`` and the files it refers to."""
    return _folder("asyncgate.spec")


def migrations_dir() -> Path:
    """The alembic script folder (``env.py`` and ``versions/``)."""
    return _folder("asyncgate.migrations")
