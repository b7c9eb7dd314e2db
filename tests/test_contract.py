"""The kinds table, the spec and the database agree: a kind added to one and not the others
fails here, before any request could find out."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from asyncgate.handlers.listing import LIST_PATH
from asyncgate.handlers.operations import operations
from asyncgate.kinds import KINDS, Body
from asyncgate.resources import spec_dir
from asyncgate.status import JobStatus

Sql = Callable[..., list[tuple[Any, ...]]]
METHODS = ("get", "post", "put", "patch", "delete")


def _follow(node: Any, base: Path) -> Any:
    """``node`` with a file-qualified ``$ref`` at its top replaced by what it names."""
    while isinstance(node, dict) and "$ref" in node:
        file, _, pointer = node["$ref"].partition("#")
        target = (base / file).resolve() if file else base
        document = yaml.safe_load(target.read_text())
        for part in filter(None, pointer.split("/")):
            document = document[part]
        node, base = document, target.parent
    return node


def spec_paths() -> dict[str, dict[str, Any]]:
    root = spec_dir() / "openapi.yaml"
    document = yaml.safe_load(root.read_text())
    return {path: _follow(item, root.parent) for path, item in document["paths"].items()}


def test_every_kind_has_its_three_operations_in_the_spec() -> None:
    paths = spec_paths()
    for info in KINDS.values():
        submit = paths[info.path]["post"]
        assert submit["operationId"] == info.submit_operation
        assert list(submit["requestBody"]["content"]) == [info.body.value], info.kind
        poll = paths[f"{info.path}/{{job_id}}"]["get"]
        assert poll["operationId"] == info.poll_operation
        cancel = paths[info.cancel_path]["post"]
        assert cancel["operationId"] == info.cancel_operation
        assert info.cancel_operation == "cancel" + info.poll_operation.removeprefix("get")
        assert set(paths[info.cancel_path]) == {"post"}, info.kind
        assert "requestBody" not in cancel, info.kind


def test_submit_and_poll_declare_prefer_and_cancel_answers_conflicts() -> None:
    paths = spec_paths()
    for info in KINDS.values():
        for operation in (paths[info.path]["post"], paths[f"{info.path}/{{job_id}}"]["get"]):
            names = {_follow(p, spec_dir() / "paths")["name"] for p in operation["parameters"]}
            assert "Prefer" in names, info.kind
        assert "409" in paths[info.cancel_path]["post"]["responses"], info.kind


def test_the_spec_has_no_job_path_the_kinds_table_does_not_know() -> None:
    job_paths = {p for p in spec_paths() if p.startswith("/v1/async/")}
    from_table = {
        p
        for info in KINDS.values()
        for p in (info.path, f"{info.path}/{{job_id}}", info.cancel_path)
    }
    assert job_paths == from_table | {LIST_PATH}
    assert spec_paths()[LIST_PATH]["get"]["operationId"] == "listAsyncJobs"


def test_the_spec_enums_are_the_kinds_and_statuses() -> None:
    schemas = yaml.safe_load((spec_dir() / "schemas" / "async.yaml").read_text())
    assert schemas["AsyncJobKind"]["enum"] == [k.value for k in KINDS]
    assert schemas["AsyncJobStatus"]["enum"] == [s.value for s in JobStatus]
    # The list's status filter names that one enum instead of repeating it.
    parameters = yaml.safe_load((spec_dir() / "parameters" / "async.yaml").read_text())
    assert parameters["AsyncJobStatusFilter"]["schema"] == {
        "$ref": "../schemas/async.yaml#/AsyncJobStatus"
    }


def test_every_operation_is_bound_and_every_binding_is_in_the_spec() -> None:
    in_spec = {
        operation["operationId"]
        for item in spec_paths().values()
        for method, operation in item.items()
        if method in METHODS
    }
    assert in_spec == set(operations())


@pytest.mark.parametrize("info", [i for i in KINDS.values() if i.body is Body.MULTIPART])
def test_required_files_are_declared_as_binary_form_fields(info: Any) -> None:
    content = spec_paths()[info.path]["post"]["requestBody"]["content"]
    schema = _follow(content[Body.MULTIPART.value]["schema"], spec_dir() / "schemas")
    properties = schema["properties"]
    declared = [f for f in info.required_files if f in properties]
    assert declared, info.kind
    for name in declared:
        field = _follow(properties[name], spec_dir() / "schemas")
        formats = {field.get("format"), _follow(field.get("items", {}), spec_dir()).get("format")}
        assert "binary" in formats, (info.kind, name)


def _check_values(sql: Sql, constraint: str) -> set[str]:
    [(definition,)] = sql(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s", constraint
    )
    return set(re.findall(r"'([a-z_]+)'::text", definition))


def test_the_database_allows_exactly_the_kinds_of_the_table(sql: Sql) -> None:
    assert _check_values(sql, "async_jobs_kind_check") == {k.value for k in KINDS}


def test_the_database_allows_exactly_the_job_statuses(sql: Sql) -> None:
    assert _check_values(sql, "async_jobs_status_check") == {s.value for s in JobStatus}
    assert {"pending", "processing", "completed", "failed", "cancelled"} <= {
        s.value for s in JobStatus
    }


def test_the_spec_lists_exactly_the_job_statuses() -> None:
    schema = yaml.safe_load((spec_dir() / "schemas" / "async.yaml").read_text())
    assert schema["AsyncJobStatus"]["enum"] == [s.value for s in JobStatus]


def test_the_openai_style_routes_are_the_kinds_tables() -> None:
    paths = spec_paths()
    in_spec = {p for p in paths if p.startswith("/openai/")}
    from_table = {p for info in KINDS.values() for p in info.openai_paths}
    assert in_spec == from_table
    assert {info.kind.value for info in KINDS.values() if info.openai_route} == {
        "text_completion",
        "chat_completion",
        "response",
        "embedding",
    }
    for info in KINDS.values():
        submit_body = paths[info.path]["post"]["requestBody"]["content"]
        for path, operation_id in zip(info.openai_paths, info.openai_operations, strict=True):
            operation = paths[path]["post"]
            assert operation["operationId"] == operation_id
            # Optional so that a retrieve needs no body; the schema is the kind's own.
            assert operation["requestBody"]["required"] is False
            assert operation["requestBody"]["content"] == submit_body
            assert set(paths[path]) == {"post"}
