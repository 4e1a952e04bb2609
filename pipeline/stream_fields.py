"""Field readers shared by the receiving sides of the stream protocols (Media Streams, L16).

Each reader returns the field or raises ``FieldError`` with a text that names the field
and what was found, never more than 80 characters of it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

_DECIMAL = re.compile(r"[0-9]+")


class FieldError(Exception):
    """A message that cannot be used at all; its text becomes a violation."""


def json_object(text: str) -> dict[str, Any]:
    """A text message as the JSON object every message of both protocols is."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FieldError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(message, dict):
        raise FieldError("message is not a JSON object")
    return message


def string_field(body: Mapping[str, Any], key: str, *, prefix: str = "", non_empty: bool = False) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise FieldError(f"{prefix}{key} is {describe(value)}, expected a string")
    if non_empty and not value:
        raise FieldError(f"{prefix}{key} is empty")
    return value


def decimal_field(body: Mapping[str, Any], key: str, *, prefix: str = "") -> int:
    value = body.get(key)
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise FieldError(f"{prefix}{key} is {describe(value)}, expected a decimal string")
    return int(value)


def object_field(body: Mapping[str, Any], key: str, *, prefix: str = "") -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise FieldError(f"{prefix}{key} is {describe(value)}, expected an object")
    return value


def custom_parameters_field(body: Mapping[str, Any], *, prefix: str = "start.") -> dict[str, str]:
    value = body.get("customParameters")
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FieldError(f"{prefix}customParameters must be an object of strings")
    return dict(value)


def token_violation(custom_parameters: Mapping[str, str], expected_token: str | None) -> str | None:
    """What is wrong with the ``Token`` parameter, without ever quoting either token."""
    if expected_token is None:
        return None
    token = custom_parameters.get("Token")
    if token is None:
        return "customParameters.Token is missing"
    if token != expected_token:
        return "customParameters.Token does not match the expected token"
    return None


def same_types(value: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    """``value == expected`` with every value of the same type: a JSON ``true`` is not 1."""
    return value == expected and all(type(value[key]) is type(expected[key]) for key in expected)


def describe(value: Any) -> str:
    if value is None:
        return "missing"
    return f"{type(value).__name__} {value!r}"[:80]
