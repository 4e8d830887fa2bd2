"""Strict pydantic schemas for every YAML file rsrs reads (jobs, model and training configs), and the one way a
validation failure becomes a single line: what key, in which file, and the nearest valid key for a typo.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo

from rsrs.core.errors import ConfigError

Schema = TypeVar("Schema", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: an unknown key is an error (pydantic ``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://|^/vsi", re.IGNORECASE)


def resolve_path(value: str | None, info: ValidationInfo) -> str | None:
    """A field validator: a relative path made absolute against the folder of the file being validated (the
    validation context's ``base_dir``, as :func:`validate` passes it); URLs and absolute paths stay as they are."""
    base = (info.context or {}).get("base_dir")
    if value is None or base is None or _URL.match(value) or Path(value).is_absolute():
        return value
    return os.path.normpath(Path(base) / value)


def load_yaml_mapping(path: str | Path, *, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds, or one :class:`ConfigError` line (missing, unreadable, bad YAML, no mapping).

    ``what`` names the file's role in messages ("job file", "model config", ...).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (IsADirectoryError, NotADirectoryError):
        raise ConfigError(f"{what} {path} is not a file") from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text (UTF-8 YAML) file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML in {path}{line}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys, got {type(data).__name__}")
    return data


def validate(
    schema: type[Schema],
    data: Any,
    *,
    source: str,
    context: dict[str, Any] | None = None,
    hints: Mapping[str, str] | None = None,
) -> Schema:
    """``data`` validated against ``schema``; the most useful problem becomes one ConfigError line naming
    ``source``. ``hints``: what to say when a required top-level list is missing or empty, by key.
    """
    try:
        return schema.model_validate(data, context=context)
    except ValidationError as err:
        raise ConfigError(describe_errors(err.errors(), root=schema, source=source, hints=hints or {})) from None


def describe_errors(errors: list[dict], *, root: type[BaseModel], source: str, hints: Mapping[str, str]) -> str:
    """One line for the most useful pydantic error: unknown keys first (with the nearest valid key), then the
    first other error, with every reason a value failed a union's members."""
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    raw_loc, kind = tuple(error["loc"]), error["type"]
    where = f" in {source}"
    if kind == "extra_forbidden":
        parent, model = _walk(root, raw_loc[:-1])
        keys = list(model.model_fields) if model is not None else []
        near = difflib.get_close_matches(str(raw_loc[-1]), keys, n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(keys)}"
        return f"unknown key '{_dotted((*parent, raw_loc[-1]))}'{where}; {hint}"
    loc, _ = _walk(root, raw_loc)
    if len(loc) == 1 and loc[0] in hints and (kind == "missing" or not error.get("input")):
        return f"no {loc[0]}{where}; {hints[loc[0]]}"
    if kind == "missing":
        return f"missing required key '{_dotted(loc)}'{where}"
    messages = dict.fromkeys(
        str(e["msg"]).removeprefix("Value error, ") for e in errors if _walk(root, tuple(e["loc"]))[0] == loc
    )
    value = error.get("input")
    shown = "" if kind == "value_error" or isinstance(value, dict | list) else f" (got {value!r})"
    return f"invalid value for '{_dotted(loc)}'{where}: {' or '.join(messages)}{shown}"


def _unwrap(annotation: Any) -> Any:
    """The model class inside ``Optional``, ``Annotated``, ``list``/``dict`` and unions, else None."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (list, dict, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if found is not None:
                return found
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _walk(root: type[BaseModel], loc: tuple) -> tuple[tuple, type[BaseModel] | None]:
    """``loc`` without pydantic's union-member tags, and the model class of the mapping it ends in."""
    model: Any = root
    kept: list = []
    for part in loc:
        if isinstance(part, int):
            kept.append(part)
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is not None:
            kept.append(part)
            model = _unwrap(field.annotation)
    return tuple(kept), model


def _dotted(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
