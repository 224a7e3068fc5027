"""Turn a pydantic ``ValidationError`` on a config into every problem at once, in a grower's words.

Each problem names the thing by its id rather than its list index (``room `room-b``` instead of
``rooms.1``), shows the value given, says what is allowed, and says where the value came from:
an environment variable (``SMARTFARM_EDGE_BROKER__PORT=abc``) or a line of the TOML file. Pure:
the caller passes the file's text, its parsed data and the environment.
"""
from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Loc = tuple[str | int, ...]
# Names an item of a list by its id: (list key, the item's raw data, all the data) -> a label
# such as "room `oyster-a`", or None for the generic "rooms #2".
ItemNamer = Callable[[str, Any, Mapping[str, Any]], str | None]

SECRET_WORDS = ("password", "token", "secret", "database_url", "dsn")
MASK = "********"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config: ``where`` it is, ``message`` and its ``source``."""

    where: str
    message: str
    source: str | None = None

    def __str__(self) -> str:
        head = f"{self.where}: {self.message}" if self.where else self.message
        return f"{head} ({self.source})" if self.source else head


def toml_lines(text: str) -> dict[Loc, int]:
    """Where each table and key of a TOML document starts (1-based line numbers), keyed by its
    path with array-of-table indexes: ``("rooms", 1, "species") -> 23``. A light scanner for the
    common layout (one key per line, ``[table]`` and ``[[array]]`` headers); inline tables and
    multi-line values map to their first line."""
    found: dict[Loc, int] = {}
    counts: dict[Loc, int] = {}
    table: Loc = ()
    in_multiline: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_multiline is not None:
            if in_multiline in line:
                in_multiline = None
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            names = _dotted(line[2:line.find("]]")])
            table = _array_path(names, counts)
            found.setdefault(table, number)
            continue
        if line.startswith("["):
            table = _table_path(_dotted(line[1:line.find("]")]), counts)
            found.setdefault(table, number)
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        found.setdefault((*table, *_dotted(key)), number)
        for quote in ('"""', "'''"):
            if value.count(quote) == 1:
                in_multiline = quote
    return found


def _dotted(key: str) -> list[str]:
    return [part.strip().strip('"').strip("'") for part in key.split(".")]


def _table_path(names: Sequence[str], counts: Mapping[Loc, int]) -> Loc:
    """``a.b.c`` with ``a`` an array of tables: ``("a", current index, "b", "c")``."""
    path: list[str | int] = []
    for name in names:
        path.append(name)
        index = counts.get(tuple(path))
        if index is not None:
            path.append(index)
    return tuple(path)


def _array_path(names: Sequence[str], counts: dict[Loc, int]) -> Loc:
    parent = _table_path(names[:-1], counts)
    key = (*parent, names[-1])
    counts[key] = counts.get(key, -1) + 1
    return (*key, counts[key])


def env_name(prefix: str, path: Sequence[str], delimiter: str = "__") -> str:
    return prefix + delimiter.join(p.upper() for p in path)


def is_secret(name: str) -> bool:
    """A setting whose value is never shown: passwords, tokens, secrets, DSNs, keys (not the
    paths of key files)."""
    lowered = name.lower()
    if lowered.endswith(("_file", "__file", "_path")):
        return False
    return any(word in lowered for word in SECRET_WORDS) or lowered == "key" \
        or lowered.endswith(("_key", "__key"))


def _env_source(loc: Loc, prefix: str, env: Mapping[str, str],
                aliases: Mapping[str, Sequence[str]]) -> tuple[str, str] | None:
    """The environment variable that gave the value at ``loc`` (or a table holding it)."""
    upper = {k.upper(): (k, v) for k, v in env.items()}
    names: list[str] = []
    for part in loc:
        if not isinstance(part, str):
            break
        names.append(part)
    for size in range(len(names), 0, -1):
        path = names[:size]
        candidates = [env_name(prefix, path)]
        if size == 1:
            candidates = [*aliases.get(path[0], ()), *candidates]
        for candidate in candidates:
            if candidate.upper() in upper:
                return upper[candidate.upper()]
    return None


def _fmt_value(value: Any, secret: bool) -> str:
    if secret:
        return MASK
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "…"
    return str(value)


def _choices(expected: str) -> str:
    names = re.findall(r"'([^']*)'", expected)
    return ", ".join(names) if names else expected


def _known_keys(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The setting names a table at ``path`` accepts (for "did you mean")."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [name for name, f in current.model_fields.items() if not f.exclude]
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel in ``X``, ``X | None``, ``list[X]``; else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (list, tuple, Union, types.UnionType):
        models = [m for a in get_args(annotation) if (m := _model_in(a)) is not None]
        return models[0] if len(models) == 1 else None
    return None


def _message(err: ErrorDetails, field: str, secret: bool, model: type[BaseModel],
             parent: Loc) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    given = _fmt_value(err.get("input"), secret)
    subject = f"{field} {given}" if field else given
    if kind == "missing":
        return f"{field} is missing" if field else "a value is missing"
    if kind == "extra_forbidden":
        unknown = field.rsplit(".", 1)[-1]
        known = _known_keys(model, parent)
        close = difflib.get_close_matches(unknown, known, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return f"`{field}` is not a setting{hint}"
    if kind in ("literal_error", "enum"):
        return f"{subject} is not one of {_choices(str(ctx.get('expected', '')))}"
    bounds = {"greater_than_equal": ("≥", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("≤", "le"), "less_than": ("<", "lt")}
    if kind in bounds:
        sign, key = bounds[kind]
        raw = err.get("input")
        if isinstance(raw, str) and not secret:  # a number written as text (the environment)
            subject = f"{field} {raw}" if field else raw
        return f"{subject} must be {sign} {_fmt_value(ctx.get(key), False)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{subject} is not a whole number"
    if kind in ("float_parsing", "float_type"):
        return f"{subject} is not a number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{subject} is not true or false"
    if kind == "string_type":
        return f"{subject} must be text (in quotes)"
    if kind in ("list_type", "tuple_type"):
        return f"{subject} must be a list"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{subject} must be a table"
    if kind == "union_tag_invalid":
        where = f"{field}." if field else ""
        return f"{where}type {_fmt_value(ctx.get('tag'), False)} is not one of" \
               f" {_choices(str(ctx.get('expected_tags', '')))}"
    if kind == "union_tag_not_found":
        return f"{field} needs a `type`" if field else "`type` is missing"
    text = err["msg"]
    for lead in ("Value error, ", "Assertion failed, "):
        text = text.removeprefix(lead)
    if isinstance(err.get("input"), dict | list) or err.get("input") is None:
        return f"{field}: {text}" if field else text
    return f"{subject}: {text}"


def _walk(loc: Loc, data: Any, namer: ItemNamer) -> tuple[list[str], list[str | int], Loc]:
    """Split ``loc`` into item labels (``room `a```), the field inside the innermost item and
    the data path (a discriminated union's tag, such as ``threshold``, dropped)."""
    labels: list[str] = []
    field: list[str | int] = []
    path: list[str | int] = []
    current: Any = data
    parent_key = ""
    for part in loc:
        if isinstance(current, list) and isinstance(part, int):
            item = current[part] if 0 <= part < len(current) else None
            if field and field[-1] == parent_key:
                field.pop()
            labels.append(namer(parent_key, item, data)
                          or f"{parent_key.removesuffix('s')} #{part + 1}")
            path.append(part)
            current = item
            field = []
            continue
        if isinstance(current, Mapping) and part not in current and current.get("type") == part:
            continue  # the tag pydantic adds to the location, not something the grower wrote
        current = current.get(part) if isinstance(current, Mapping) else None
        path.append(part)
        field.append(part)
        parent_key = str(part)
    return labels, field, tuple(path)


def problems_from_validation(
    exc: ValidationError,
    *,
    model: type[BaseModel],
    data: Mapping[str, Any],
    env: Mapping[str, str],
    env_prefix: str,
    text: str | None = None,
    namer: ItemNamer | None = None,
    env_aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[Problem]:
    """Every error of ``exc`` as a Problem, in the order pydantic found them."""
    lines = toml_lines(text) if text is not None else {}
    name_item = namer or (lambda key, item, root: None)
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        labels, field_parts, path = _walk(loc, data, name_item)
        field = ".".join(str(p) for p in field_parts)
        secret = any(is_secret(str(p)) for p in field_parts)
        parent = path[:-1]
        if err["type"] == "value_error" and not field_parts and "\n" in err["msg"]:
            for line in err["msg"].removeprefix("Value error, ").splitlines():
                out.append(Problem(", ".join(labels), line))
            continue
        message = _message(err, field, secret, model, parent)
        source = _source(path, env, env_prefix, lines, env_aliases or {})
        out.append(Problem(", ".join(labels), message, source))
    return out


def _source(path: Loc, env: Mapping[str, str], prefix: str, lines: Mapping[Loc, int],
            aliases: Mapping[str, Sequence[str]]) -> str | None:
    from_env = _env_source(path, prefix, env, aliases)
    if from_env is not None:
        name, value = from_env
        shown = MASK if is_secret(name) else value
        if len(shown) > 60:
            shown = shown[:57] + "…"
        return f"from {name}={shown}"
    for size in range(len(path), 0, -1):
        number = lines.get(path[:size])
        if number is not None:
            return f"line {number}"
    return None


def report(where: str, problems: Iterable[Problem]) -> str:
    """``where: <one problem>`` on one line, or a header and one indented line per problem."""
    items = [str(p) for p in problems]
    if len(items) == 1:
        return f"{where}: {items[0]}"
    return f"{where}: {len(items)} problems\n" + "\n".join(f"  - {item}" for item in items)
