"""An independent check of every answer against the spec, with openapi-core (not Connexion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound


class SpecChecker:
    """Validates responses of operations the spec declares; raises on any mismatch."""

    def __init__(self, spec_path: Path) -> None:
        self.openapi = OpenAPI.from_file_path(str(spec_path))
        self.checked = 0

    def check(self, response: requests.Response) -> bool:
        """True when the response was checked, False when its route is not in the spec."""
        try:
            self.openapi.validate_response(
                RequestsOpenAPIRequest(response.request), RequestsOpenAPIResponse(response)
            )
        except (PathNotFound, OperationNotFound):
            return False
        self.checked += 1
        return True

    def session(self, base_url: str) -> requests.Session:
        """A requests session whose every response is checked before the test sees it."""
        session = requests.Session()

        def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            self.check(response)

        session.hooks["response"].append(hook)
        return session
