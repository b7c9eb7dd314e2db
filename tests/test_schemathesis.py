"""Property-based run of schemathesis over every operation of the spec against a live gateway.

Valid and invalid requests are generated from the spec for each operation; every answer must
be no 5xx, and its status code, content type, headers and body must be what the spec declares.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from asyncgate.resources import spec_dir
from tests.processes import GatewayProcess, Processes
from tests.upstream import UpstreamThread

EXAMPLES_PER_OPERATION = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def with_configured_model(case: Case) -> Case:
    """A generated valid submission, sent to a configured provider so that it is accepted.

    Random ``provider/model`` names are valid by the spec but name no configured provider,
    so without this every valid submission would stop at the same 400.
    """
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = "fake/ok"
        case.body.pop("fallbacks", None)
    return case


@pytest.fixture
def serve(tmp_path: Path, database_url: str, upstream: UpstreamThread) -> Iterator[GatewayProcess]:
    """The gateway in its own process: hypothesis watches this process's global ``random``,
    which an in-process gateway's worker and connection pool also draw from."""
    with Processes(tmp_path, database_url, upstream.url) as processes:
        yield processes.start("serve")


def test_every_operation_answers_as_the_spec_declares(serve: GatewayProcess) -> None:
    schema = schemathesis.openapi.from_path(spec_dir() / "openapi.yaml")
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) >= 19
    calls: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    with requests.Session() as session:
        for operation in operations:
            positive = operation.as_strategy(GenerationMode.POSITIVE)
            negative = operation.as_strategy(GenerationMode.NEGATIVE)
            strategy = positive.map(with_configured_model) | positive | negative

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Case) -> None:
                calls[case.operation.label] += 1
                response = case.call(base_url=serve.url, session=session, timeout=10)
                statuses[response.status_code] += 1
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except FailureGroup as exc:
                failures.append(f"{operation.label}: {exc}")

    assert not failures, "\n\n".join(failures)
    assert sum(calls.values()) > len(operations)
    assert set(calls) == {operation.label for operation in operations}
    assert not [code for code in statuses if code >= 500]
    # Valid requests got through, invalid ones were turned away.
    assert statuses[202] > 0 and statuses[400] > 0
    # Nothing went wrong behind the answers either, e.g. in the worker running accepted jobs.
    assert serve.terminate() == 0
    logs = serve.logs()
    assert "Traceback" not in logs
    assert not re.findall(r"^\S+ ERROR (?!connexion\.validators)", logs, re.MULTILINE)
