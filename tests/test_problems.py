"""Validation messages, as pure functions: they name the field, say what it must be, and never
carry the value the client sent."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft4Validator

from asyncgate.handlers.problems import describe

SECRET = "value-the-client-sent"

CASES: list[tuple[dict[str, Any], Any, str, str]] = [
    ({"type": "object", "required": ["model"]}, {"x": SECRET}, "model is required", "model"),
    ({"properties": {"n": {"type": "integer"}}}, {"n": SECRET}, "n must be an integer", "n"),
    (
        {"properties": {"t": {"minimum": 0, "exclusiveMinimum": True}}},
        {"t": 0},
        "t must be > 0",
        "t",
    ),
    ({"properties": {"t": {"maximum": 2}}}, {"t": 7}, "t must be <= 2", "t"),
    ({"properties": {"s": {"enum": ["a", "b"]}}}, {"s": SECRET}, "s must be one of: a, b", "s"),
    (
        {"properties": {"m": {"pattern": "^x/", "description": "provider/model"}}},
        {"m": SECRET},
        "m must be provider/model",
        "m",
    ),
    (
        {"properties": {"d": {"type": "array", "items": {"type": "string", "minLength": 1}}}},
        {"d": ["ok", ""]},
        "d[1] must not be empty",
        "d[1]",
    ),
    (
        {"properties": {"d": {"oneOf": [{"type": "string"}, {"type": "object"}]}}},
        {"d": 7},
        "d must be a string or an object",
        "d",
    ),
]


@pytest.mark.parametrize(("schema", "instance", "message", "param"), CASES)
def test_message_names_the_field_and_hides_the_value(
    schema: dict[str, Any], instance: Any, message: str, param: str
) -> None:
    error = next(Draft4Validator(schema).iter_errors(instance))
    assert describe(error) == (message, param)
    assert SECRET not in describe(error)[0]


def test_a_one_of_with_a_discriminator_lists_its_values() -> None:
    branch = {"type": "object", "required": ["type", "url"]}
    schema = {
        "oneOf": [
            {**branch, "properties": {"type": {"enum": ["a_url"]}}},
            {**branch, "properties": {"type": {"enum": ["b_url"]}}},
        ]
    }
    error = next(Draft4Validator(schema).iter_errors({"type": SECRET, "url": SECRET}))
    assert describe(error) == ("type must be one of: a_url, b_url", "type")
