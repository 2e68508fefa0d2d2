"""Read ``docs/asyncapi.yaml`` and check frames against it. Helpers only: no tests here.

Conventions of the AsyncAPI file that this module relies on:

* every message's ``name`` is the frame's wire ``type``; a type with several
  shapes has one message per shape (``welcomeClinician``/``welcomePatient``,
  both ``name: welcome``), so a type maps to a list of candidate schemas;
* the messages of ``action: receive`` operations are the requests (client to
  server) and those of ``action: send`` operations are the server's frames;
* request messages carry ``x-queuechat-role`` (``clinician``, ``patient`` or
  ``any``).

Payload schemas are returned with every ``$ref`` inlined, so each one stands
alone and can be checked with :class:`jsonschema.Draft7Validator` (AsyncAPI
3's default schema format is a superset of draft-07).

Failure messages name frame types, JSON paths, keywords and the values the
schema allows; they never quote a value from the frame, so that no message
text or patient name ends up in a test report (R13).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
ASYNCAPI_PATH = ROOT / "docs" / "asyncapi.yaml"
# Installed by `npm ci` from package.json / package-lock.json (@asyncapi/specs, pinned).
ASYNCAPI_META_SCHEMA_PATH = ROOT / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"

ROLE_KEY = "x-queuechat-role"


# --------------------------------------------------------------------------- loading


@functools.cache
def _document() -> dict[str, Any]:
    with ASYNCAPI_PATH.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict):
        raise ValueError(f"{ASYNCAPI_PATH} is not a YAML mapping")
    return document


def load_asyncapi() -> dict[str, Any]:
    """The AsyncAPI document, as plain data (a fresh copy each call)."""
    return copy.deepcopy(_document())


@functools.cache
def _meta_schema() -> dict[str, Any]:
    if not ASYNCAPI_META_SCHEMA_PATH.is_file():
        raise FileNotFoundError(
            f"AsyncAPI 3.0.0 meta-schema not found at {ASYNCAPI_META_SCHEMA_PATH}; "
            f"run `npm ci` in {ROOT} to install @asyncapi/specs (pinned in package.json)"
        )
    with ASYNCAPI_META_SCHEMA_PATH.open(encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


def asyncapi_json_schema() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 meta-schema (draft-07, one bundled file) from node_modules."""
    return copy.deepcopy(_meta_schema())


# --------------------------------------------------------------------------- references


def _pointer(document: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are used in {ASYNCAPI_PATH.name}, got {ref!r}")
    node: Any = document
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(token)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            raise KeyError(f"unresolvable reference {ref!r} in {ASYNCAPI_PATH.name}")
    return node


def deref(node: Any, document: dict[str, Any] | None = None, _seen: tuple[str, ...] = ()) -> Any:
    """A copy of ``node`` with every local ``$ref`` inlined (draft-07: siblings of $ref are ignored)."""
    document = _document() if document is None else document
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in _seen:
                raise ValueError(f"circular reference {ref!r} in {ASYNCAPI_PATH.name}")
            return deref(_pointer(document, ref), document, (*_seen, ref))
        return {key: deref(value, document, _seen) for key, value in node.items()}
    if isinstance(node, list):
        return [deref(item, document, _seen) for item in node]
    return node


# --------------------------------------------------------------------------- messages


@functools.cache
def _messages_by_action() -> dict[str, tuple[tuple[str, dict[str, Any]], ...]]:
    """action -> ((component key, dereferenced message), ...) over every operation, no repeats."""
    document = _document()
    found: dict[str, dict[str, dict[str, Any]]] = {"send": {}, "receive": {}}
    for op_key, operation in document.get("operations", {}).items():
        action = operation.get("action")
        if action not in found:
            raise ValueError(f"operation {op_key!r} has action {action!r}")
        for reference in operation.get("messages", []):
            key = reference["$ref"].rsplit("/", 1)[-1]
            found[action][key] = deref(reference, document)
    return {action: tuple(items.items()) for action, items in found.items()}


def _by_type(pairs: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    table: dict[str, list[dict[str, Any]]] = {}
    for _key, message in pairs:
        table.setdefault(message["name"], []).append(copy.deepcopy(message["payload"]))
    return table


def request_messages() -> dict[str, dict[str, Any]]:
    """Component key -> dereferenced message object, for the requests (client to server)."""
    return {key: copy.deepcopy(message) for key, message in _messages_by_action()["receive"]}


def event_messages() -> dict[str, dict[str, Any]]:
    """Component key -> dereferenced message object, for the server's frames (answers and events)."""
    return {key: copy.deepcopy(message) for key, message in _messages_by_action()["send"]}


def request_schemas(role: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Wire type -> candidate payload schemas of requests; ``role`` keeps that role's variants only."""
    pairs = _messages_by_action()["receive"]
    if role is not None:
        pairs = tuple((k, m) for k, m in pairs if m.get(ROLE_KEY) in (role, "any"))
    return _by_type(pairs)


def event_schemas() -> dict[str, list[dict[str, Any]]]:
    """Wire type -> candidate payload schemas of the frames the server sends."""
    return _by_type(_messages_by_action()["send"])


def message_schemas() -> dict[str, list[dict[str, Any]]]:
    """Wire type -> candidate payload schemas, requests and server frames together."""
    table = request_schemas()
    for frame_type, schemas in event_schemas().items():
        table.setdefault(frame_type, []).extend(schemas)
    return table


# --------------------------------------------------------------------------- validation


@functools.cache
def _validators(kind: str, role: str | None) -> dict[str, tuple[tuple[str, jsonschema.Draft7Validator], ...]]:
    pairs = _messages_by_action()["send" if kind == "event" else "receive"]
    if role is not None:
        pairs = tuple((k, m) for k, m in pairs if m.get(ROLE_KEY) in (role, "any"))
    table: dict[str, list[tuple[str, jsonschema.Draft7Validator]]] = {}
    for key, message in pairs:
        validator = jsonschema.Draft7Validator(message["payload"])
        table.setdefault(message["name"], []).append((key, validator))
    return {frame_type: tuple(items) for frame_type, items in table.items()}


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def _short(value: Any, limit: int = 80) -> str:
    """A schema-side value (never a frame value) for a failure message."""
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: jsonschema.ValidationError) -> str:
    """One validation error without any value taken from the frame."""
    where = error.json_path
    keyword = error.validator
    expected = error.validator_value
    if keyword == "required":
        present = error.instance if isinstance(error.instance, dict) else {}
        missing = [name for name in expected if name not in present]
        return f"{where}: missing required {missing}"
    if keyword == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = (
            sorted(k for k in error.instance if k not in allowed) if isinstance(error.instance, dict) else []
        )
        return f"{where}: unexpected properties {[k[:40] for k in extra]}"
    if keyword == "type":
        return f"{where}: expected type {_short(expected)}, got {_type_name(error.instance)}"
    if keyword in ("oneOf", "anyOf") and error.context:
        inner = jsonschema.exceptions.best_match(error.context)
        return f"{where}: matches no {keyword} branch (closest: {_describe(inner)})"
    if keyword == "not":
        return f"{where}: matches a forbidden schema {_short(expected)}"
    if keyword in ("if", "then", "else"):
        return f"{where}: fails a conditional ({keyword})"
    # enum, const, pattern, minLength, maxLength, minimum, maximum, maxItems, ...
    return f"{where}: fails {keyword} {_short(expected)} (got a {_type_name(error.instance)})"


def _check(
    frame: Any, table: dict[str, tuple[tuple[str, jsonschema.Draft7Validator], ...]], what: str
) -> None:
    if not isinstance(frame, dict):
        raise AssertionError(f"{what} is not a JSON object (got {_type_name(frame)})")
    frame_type = frame.get("type")
    if not isinstance(frame_type, str):
        raise AssertionError(f"{what} has no string 'type'")
    shown_type = _short(frame_type, 50)
    candidates = table.get(frame_type)
    if not candidates:
        raise AssertionError(f"{what} type {shown_type} has no message in {ASYNCAPI_PATH.name}")
    problems = []
    for title, validator in candidates:
        errors = sorted(
            validator.iter_errors(frame), key=lambda e: (len(e.path), e.json_path, str(e.validator))
        )
        if not errors:
            return
        described = list(dict.fromkeys(_describe(error) for error in errors))
        details = "; ".join(described[:6])
        more = f" (+{len(described) - 6} more)" if len(described) > 6 else ""
        problems.append(f"[{title}] {details}{more}")
    raise AssertionError(
        f"{what} of type {shown_type} matches none of its {len(candidates)} schema(s) in "
        f"{ASYNCAPI_PATH.name}: " + " | ".join(problems)
    )


def validate_event(frame: dict[str, Any]) -> None:
    """Raise AssertionError unless ``frame`` (a decoded server frame) matches a schema of its type."""
    _check(frame, _validators("event", None), "server frame")


def validate_request(frame: dict[str, Any], role: str | None = None) -> None:
    """Raise AssertionError unless ``frame`` (a request) matches a request schema of its type.

    ``role`` (``clinician`` or ``patient``) restricts the candidates to that role's variants.
    """
    _check(frame, _validators("request", role), f"{role or 'client'} request")
