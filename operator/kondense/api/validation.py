"""Turn pydantic errors and YAML problems into messages that name the field and the problem.

``spec.targets[1].params.amount: must be < 1`` rather than pydantic's tuple locations with union
tags in them. Used by `kondense validate`, by the operator's `Invalid` condition and by the
compression Job, so users see the same wording everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kondense.api.resource import API_VERSION, DNS1123_LABEL, KIND, PIPELINE, CompressedModel
from kondense.api.techniques import Technique

_UNION_TAGS = {t.value for t in Technique} | {PIPELINE}
_SUBPATH = re.compile(
    r"^(\[\d+\](?:\.[A-Za-z][\w]*)*|[A-Za-z][\w]*(?:\.[A-Za-z][\w]*|\[\d+\])*): (.+)$", re.S
)


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def join_path(loc: Sequence[int | str]) -> str:
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS and isinstance(previous, int):
            continue  # a discriminated-union tag, not a field the user wrote
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _message(err: dict[str, Any]) -> tuple[str, str]:
    """(extra path, message) for one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "less_than":
        return "", f"must be < {ctx['lt']}, got {_fmt(value)}"
    if kind == "less_than_equal":
        return "", f"must be <= {ctx['le']}, got {_fmt(value)}"
    if kind == "greater_than":
        return "", f"must be > {ctx['gt']}, got {_fmt(value)}"
    if kind == "greater_than_equal":
        return "", f"must be >= {ctx['ge']}, got {_fmt(value)}"
    if kind == "missing":
        return "", "required field is missing"
    if kind == "extra_forbidden":
        loc = err["loc"]
        tags = [part for part in loc if isinstance(part, str) and part in _UNION_TAGS]
        if loc and loc[-1] == "steps" and tags:
            return "", "set either technique (with params) or steps, not both"
        if len(loc) >= 2 and loc[-2] == "params" and tags and tags[-1] != PIPELINE:
            return "", f"unknown field: not a parameter of technique {tags[-1]}"
        return "", "unknown field"
    if kind in ("enum", "literal_error"):
        return "", f"must be one of {ctx.get('expected', '')}, got {_fmt(value)}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == DNS1123_LABEL:
            return "", f"{_fmt(value)} is not a DNS-1123 label (lower-case letters, digits and '-')"
        return "", f"{_fmt(value)} does not match {ctx.get('pattern')}"
    if kind == "string_too_long":
        return "", f"must be at most {ctx['max_length']} characters"
    if kind in ("too_short", "too_long"):
        bound = "at least" if kind == "too_short" else "at most"
        limit = ctx.get("min_length", ctx.get("max_length"))
        return "", f"must have {bound} {limit} items, has {ctx.get('actual_length')}"
    if kind == "union_tag_invalid":
        known = ", ".join(t.value for t in Technique)
        return ".technique", f"unknown technique {_fmt(ctx.get('tag'))}; expected one of {known}"
    if kind == "union_tag_not_found":
        return "", "set either technique (with params) or steps"
    if kind == "model_type" or kind == "dict_type":
        return "", f"must be a mapping, got {type(value).__name__}"
    if kind == "list_type":
        return "", f"must be a list, got {type(value).__name__}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "", f"must be an integer, got {_fmt(value)}"
    if kind in ("float_type", "float_parsing"):
        return "", f"must be a number, got {_fmt(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return "", f"must be true or false, got {_fmt(value)}"
    if kind in ("string_type",):
        return "", f"must be a string, got {_fmt(value)}"
    message = err["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        match = _SUBPATH.match(message)
        if match:
            sub = match.group(1)
            return (sub if sub.startswith("[") else "." + sub), match.group(2)
    return "", message


def field_errors(exc: ValidationError, prefix: Sequence[int | str] = ()) -> list[FieldError]:
    out: list[FieldError] = []
    for err in exc.errors():
        extra, message = _message(dict(err))
        path = join_path([*prefix, *err["loc"]]) + extra
        if path.startswith("."):
            path = path[1:]
        error = FieldError(path, message)
        if error not in out:
            out.append(error)
    return out


class DocumentError(ValueError):
    """A file that cannot even be read as CompressedModel documents."""


@dataclass
class Document:
    source: str  # "file.yaml" or "file.yaml (document 2)"
    body: Any


def load_documents(path: Path | str, text: str | None = None) -> list[Document]:
    """Read every YAML document of a file; malformed YAML becomes a DocumentError with line/column."""
    name = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DocumentError(f"{name}: cannot read file: {exc}") from None
    try:
        bodies = [b for b in yaml.safe_load_all(text) if b is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise DocumentError(f"{name}{where}: malformed YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"{name}: malformed YAML: {exc}") from None
    if not bodies:
        raise DocumentError(f"{name}: no YAML document found")
    many = len(bodies) > 1
    return [Document(f"{name} (document {i + 1})" if many else name, body) for i, body in enumerate(bodies)]


def check_header(body: Any) -> list[FieldError]:
    """apiVersion/kind are checked first: validating a Deployment as a CompressedModel helps nobody."""
    if not isinstance(body, dict):
        return [FieldError("", f"expected a mapping (a Kubernetes object), got {type(body).__name__}")]
    errors = []
    if body.get("apiVersion") != API_VERSION:
        errors.append(
            FieldError("apiVersion", f"must be {API_VERSION!r}, got {_fmt(body.get('apiVersion'))}")
        )
    if body.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND!r}, got {_fmt(body.get('kind'))}"))
    return errors


def validate_object(body: Any) -> tuple[CompressedModel | None, list[FieldError]]:
    errors = check_header(body)
    if errors:
        return None, errors
    try:
        return CompressedModel.model_validate(body), []
    except ValidationError as exc:
        return None, field_errors(exc)


def format_errors(source: str, errors: Iterable[FieldError]) -> list[str]:
    return [f"{source}: {error}" for error in errors]
