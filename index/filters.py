"""Metadata filters: one grammar, compiled to a Python predicate and to a SQLite WHERE clause.

Document metadata is a JSON object.  A filter is a JSON object too (Mongo-style):

Field conditions
    ``{"lang": "en"}``                       equality; several keys in one object are ANDed:
    ``{"lang": "en", "year": 2024}``         lang == "en" AND year == 2024
    ``{"author.name": "Ada"}``               dotted paths reach into nested objects
    ``{"year": {"$gte": 2020, "$lt": 2024}}`` several operators on one field are ANDed

Operators (inside a field's object)
    ``$eq`` / ``$ne``      equal / not equal; operand: string, number, boolean or null
    ``$gt`` ``$gte`` ``$lt`` ``$lte``
                           ranges; operand: a number, or an ISO-8601 date/datetime string
    ``$in`` / ``$nin``     equal to one of / none of a non-empty list of scalars (max 1024)
    ``$exists``            ``true``: the field is present (even if null); ``false``: absent

Logical operators (at the level of a filter object)
    ``{"$and": [f1, f2, ...]}``   all match (a non-empty list of filters)
    ``{"$or": [f1, f2, ...]}``    at least one matches
    ``{"$not": f}``               f does not match
    They combine with field conditions: ``{"lang": "en", "$or": [{"a": 1}, {"b": 2}]}``.
    The empty filter ``{}`` matches every document.

Semantics
    * Types are strict: ``1`` equals ``1.0`` but not ``"1"`` or ``true``; ``null`` only
      equals a JSON null (use ``$exists`` to test for a missing field).
    * Number ranges only match numbers (booleans are not numbers).
    * Dates: when a range operand is a string, it must be an ISO-8601 date or datetime
      (``2024-05-01``, ``2024-05-01T12:30``, ``2024-05-01T12:30:00.5Z``,
      ``2024-05-01 12:30:00+02:00``); it then matches metadata strings of the same form,
      compared as instants in time.  A datetime without a UTC offset and a bare date
      (midnight) are taken as UTC.  Strings that are not ISO dates never match a date range.
      ``$eq``/``$in`` compare strings exactly, not as dates.
    * Arrays: when the metadata value is a list, a condition matches if ANY element matches
      (``{"tags": "ml"}`` matches ``{"tags": ["ml", "nlp"]}``); ``$ne`` / ``$nin`` match when NO
      element is equal.  Each operator is checked on its own, so ``{"x": {"$gt": 1, "$lt": 3}}``
      on ``[0, 5]`` matches (5 > 1 and 0 < 3), as in MongoDB.
    * ``$ne``, ``$nin`` and ``$not`` match documents where the field is missing.
    * Field names may contain any character except ``"``, ``\\`` and control characters; a ``.``
      always separates path segments.  Field names cannot start with ``$``.

Limits (arguments of :func:`parse_filter`): nesting depth (default 8: each ``$and``/``$or``/
``$not`` adds a level) and the total number of conditions (default 256).  Any violation raises
:class:`~index.errors.InvalidFilter` whose message names the offending part, e.g.
``filter.$or[1].year: unknown operator '$gtt'``.

Examples
    ``{"category": {"$in": ["news", "blog"]}, "published": {"$gte": "2024-01-01"}}``
    ``{"$or": [{"price": {"$lt": 10}}, {"on_sale": true}], "$not": {"tags": "archived"}}``
"""
from __future__ import annotations

import math
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Union

from .errors import InvalidFilter

DEFAULT_MAX_DEPTH = 8
DEFAULT_MAX_CONDITIONS = 256
MAX_IN_VALUES = 1024
ISO_TS_SQL_FUNCTION = "semsearch_iso_ts"

_COMPARE_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_FIELD_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
_LOGICAL_OPS = ("$and", "$or", "$not")
_ISO_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?"
)
_BAD_FIELD_CHARS = re.compile(r'["\\\x00-\x1f\x7f]')
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1

Scalar = Union[str, int, float, bool, None]


def parse_iso_timestamp(value: object) -> int | None:
    """Microseconds since the epoch (UTC) for an ISO-8601 date/datetime string, else None."""
    if not isinstance(value, str) or len(value) > 40 or not _ISO_RE.fullmatch(value):
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _MICROSECOND


def register_sql_functions(conn: sqlite3.Connection) -> None:
    """Install the SQL function the compiled WHERE clauses use for date ranges."""
    conn.create_function(ISO_TS_SQL_FUNCTION, 1, parse_iso_timestamp, deterministic=True)


# ----------------------------------------------------------------------------- syntax tree
@dataclass(frozen=True)
class Condition:
    """One operator applied to one field.  ``value`` is the checked operand: a scalar for
    $eq/$ne, a tuple of scalars for $in/$nin, a bool for $exists and, for ranges,
    ``("number", x)`` or ``("date", microseconds)``."""

    path: tuple[str, ...]
    op: str
    value: Any


@dataclass(frozen=True)
class Logical:
    op: str  # "and" | "or" | "not" (not has exactly one child)
    children: tuple["Node", ...]


Node = Union[Condition, Logical]


# ----------------------------------------------------------------------------- parsing
class _Parser:
    def __init__(self, max_depth: int, max_conditions: int) -> None:
        self.max_depth = max_depth
        self.max_conditions = max_conditions
        self.conditions = 0

    def fail(self, where: str, message: str, **details: Any) -> InvalidFilter:
        return InvalidFilter(f"{where}: {message}", {"location": where, **details})

    def filter(self, spec: Any, where: str, depth: int) -> Node:
        if depth > self.max_depth:
            raise self.fail(where, f"filter is nested deeper than {self.max_depth} levels",
                            max_depth=self.max_depth)
        if not isinstance(spec, Mapping):
            raise self.fail(where, f"a filter must be a JSON object, got {_kind(spec)}")
        parts: list[Node] = []
        for key, operand in spec.items():
            if not isinstance(key, str):
                raise self.fail(where, f"keys must be strings, got {_kind(key)}")
            if key in ("$and", "$or"):
                if not isinstance(operand, list) or not operand:
                    raise self.fail(f"{where}.{key}", "expects a non-empty list of filters")
                children = tuple(self.filter(f, f"{where}.{key}[{i}]", depth + 1)
                                 for i, f in enumerate(operand))
                parts.append(Logical(key[1:], children))
            elif key == "$not":
                parts.append(Logical("not", (self.filter(operand, f"{where}.$not", depth + 1),)))
            elif key.startswith("$"):
                raise self.fail(where, f"unknown operator {key!r} (logical operators: "
                                f"{', '.join(_LOGICAL_OPS)}; field names cannot start with '$')")
            else:
                parts.extend(self.field(key, operand, f"{where}.{key}"))
        return parts[0] if len(parts) == 1 else Logical("and", tuple(parts))

    def field(self, name: str, operand: Any, where: str) -> list[Node]:
        path = _parse_path(name, where, self)
        if isinstance(operand, Mapping):
            if not operand:
                raise self.fail(where, "expects a value or an object of operators, got {}")
            keys = list(operand)
            if not all(isinstance(k, str) and k.startswith("$") for k in keys):
                raise self.fail(where, "an object value must contain only operators "
                                "($eq, $in, $gt...); to match a nested field use a dotted "
                                f"path such as '{name}.subfield'")
            return [self.operator(path, op, operand[op], f"{where}.{op}") for op in keys]
        return [self.operator(path, "$eq", operand, where)]

    def operator(self, path: tuple[str, ...], op: str, operand: Any, where: str) -> Condition:
        self.conditions += 1
        if self.conditions > self.max_conditions:
            raise self.fail(where, f"too many conditions (the limit is {self.max_conditions})",
                            max_conditions=self.max_conditions)
        if op in ("$eq", "$ne"):
            return Condition(path, op[1:], self.scalar(operand, where, op))
        if op in _COMPARE_OPS:
            return Condition(path, op[1:], self.range_operand(operand, where, op))
        if op in ("$in", "$nin"):
            if not isinstance(operand, list) or not operand:
                raise self.fail(where, f"{op} expects a non-empty list of values, got "
                                f"{'an empty list' if operand == [] else _kind(operand)}")
            if len(operand) > MAX_IN_VALUES:
                raise self.fail(where, f"{op} accepts at most {MAX_IN_VALUES} values")
            values = tuple(self.scalar(v, f"{where}[{i}]", op) for i, v in enumerate(operand))
            return Condition(path, op[1:], values)
        if op == "$exists":
            if not isinstance(operand, bool):
                raise self.fail(where, f"$exists expects true or false, got {_kind(operand)}")
            return Condition(path, "exists", operand)
        raise self.fail(where, f"unknown operator {op!r} (allowed: {', '.join(_FIELD_OPS)})")

    def check_int(self, value: int, where: str, op: str) -> int:
        # SQLite integers are 64-bit: a larger one cannot be bound as a parameter
        if not isinstance(value, bool) and not _INT64_MIN <= value <= _INT64_MAX:
            raise self.fail(where, f"{op} expects a number; integers must fit in 64 bits")
        return value

    def scalar(self, value: Any, where: str, op: str) -> Scalar:
        if isinstance(value, int):
            return self.check_int(value, where, op)
        if value is None or isinstance(value, (str, bool)):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(where, f"{op} expects a finite number, got {value}")
            return value
        hint = " (use $in for a list of values)" if isinstance(value, list) and op == "$eq" else ""
        raise self.fail(where, f"{op} expects a string, number, boolean or null, "
                        f"got {_kind(value)}{hint}")

    def range_operand(self, value: Any, where: str, op: str) -> tuple[str, int | float]:
        if isinstance(value, int) and not isinstance(value, bool):
            return ("number", self.check_int(value, where, op))
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(where, f"{op} expects a finite number, got {value}")
            return ("number", value)
        if isinstance(value, str):
            stamp = parse_iso_timestamp(value)
            if stamp is None:
                raise self.fail(where, f"{op} expects a number or an ISO-8601 date/datetime "
                                f"(e.g. 2024-05-01 or 2024-05-01T12:00:00Z), got {value!r}")
            return ("date", stamp)
        raise self.fail(where, f"{op} expects a number or an ISO-8601 date string, "
                        f"got {_kind(value)}")


def _parse_path(name: str, where: str, parser: _Parser) -> tuple[str, ...]:
    if len(name) > 256:
        raise parser.fail(where[:80] + "...", "field name is longer than 256 characters")
    if _BAD_FIELD_CHARS.search(name):
        raise parser.fail(where, "field names cannot contain '\"', '\\' or control characters")
    segments = tuple(name.split("."))
    if any(not s for s in segments):
        raise parser.fail(where, f"invalid field path {name!r}: empty segment around '.'")
    return segments


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", int: "a number", float: "a number",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------- predicate
_MISSING = object()


def _lookup(metadata: Any, path: tuple[str, ...]) -> Any:
    value = metadata
    for segment in path:
        if not isinstance(value, Mapping) or segment not in value:
            return _MISSING
        value = value[segment]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar_equals(value: Any, target: Scalar) -> bool:
    if target is None or isinstance(target, bool):
        return value is target
    if isinstance(target, str):
        return isinstance(value, str) and value == target
    return _is_number(value) and value == target


def _scalar_test(cond: Condition) -> Callable[[Any], bool]:
    op, operand = cond.op, cond.value
    if op in ("eq", "ne"):
        return lambda v: _scalar_equals(v, operand)
    if op in ("in", "nin"):
        return lambda v: any(_scalar_equals(v, t) for t in operand)
    kind, bound = operand
    compare = {"gt": lambda a: a > bound, "gte": lambda a: a >= bound,
               "lt": lambda a: a < bound, "lte": lambda a: a <= bound}[op]
    if kind == "number":
        return lambda v: _is_number(v) and compare(v)

    def date_test(v: Any) -> bool:
        stamp = parse_iso_timestamp(v)
        return stamp is not None and compare(stamp)
    return date_test


def _predicate(node: Node) -> Callable[[Mapping[str, Any]], bool]:
    if isinstance(node, Logical):
        children = [_predicate(c) for c in node.children]
        if node.op == "and":
            return lambda m: all(c(m) for c in children)
        if node.op == "or":
            return lambda m: any(c(m) for c in children)
        return lambda m: not children[0](m)
    path = node.path
    if node.op == "exists":
        want = node.value
        return lambda m: (_lookup(m, path) is not _MISSING) == want
    test = _scalar_test(node)
    negate = node.op in ("ne", "nin")

    def leaf(m: Mapping[str, Any]) -> bool:
        value = _lookup(m, path)
        if value is _MISSING:
            hit = False
        elif isinstance(value, list):
            hit = any(test(e) for e in value)
        else:
            hit = test(value)
        return hit != negate
    return leaf


# ----------------------------------------------------------------------------- SQL
def json_path(path: tuple[str, ...]) -> str:
    """SQLite JSON path for a validated field path, always quoted: ``$."a"."b"``.  Segments
    never contain '"' or '\\' (rejected by the parser), so quoting is unambiguous.  Metadata
    must be stored as ``json.dumps(..., ensure_ascii=False)`` so non-ASCII keys compare
    byte-for-byte with the path.  The path is bound
    as a parameter, never interpolated into SQL."""
    return "$" + "".join(f'."{segment}"' for segment in path)


_NUMERIC_TYPES = "('integer','real')"


def _sql_test(cond: Condition) -> tuple[str, list[Any]]:
    """SQL testing one JSON value given as ``je.type`` (json_type name) and ``je.value``."""
    op, operand = cond.op, cond.value
    if op in ("eq", "ne", "in", "nin"):
        targets = operand if op in ("in", "nin") else (operand,)
        clauses: list[str] = []
        params: list[Any] = []
        numbers = [x for x in targets if _is_number(x)]
        strings = [x for x in targets if isinstance(x, str)]
        for values, type_test in ((numbers, f"IN {_NUMERIC_TYPES}"), (strings, "= 'text'")):
            if values:
                marks = ",".join("?" * len(values))
                clauses.append(f"(je.type {type_test} AND je.value IN ({marks}))")
                params += values
        for literal, name in ((True, "true"), (False, "false"), (None, "null")):
            if any(x is literal for x in targets):
                clauses.append(f"je.type = '{name}'")
        return "(" + " OR ".join(clauses) + ")", params
    kind, bound = operand
    sql_op = _COMPARE_OPS["$" + op]
    if kind == "number":
        return f"(je.type IN {_NUMERIC_TYPES} AND je.value {sql_op} ?)", [bound]
    return f"(je.type = 'text' AND {ISO_TS_SQL_FUNCTION}(je.value) {sql_op} ?)", [bound]


def _sql(node: Node, column: str) -> tuple[str, list[Any]]:
    if isinstance(node, Logical):
        parts = [_sql(c, column) for c in node.children]
        params = [p for _, ps in parts for p in ps]
        if node.op == "not":
            return f"(NOT {parts[0][0]})", params
        joiner = " AND " if node.op == "and" else " OR "
        return "(" + joiner.join(sql for sql, _ in parts) + ")", params
    jpath = json_path(node.path)
    if node.op == "exists":
        null_test = "IS NOT NULL" if node.value else "IS NULL"
        return f"(json_type({column}, ?) {null_test})", [jpath]
    # json_each over the field yields one row for a scalar (key NULL) and one per element for
    # an array (integer keys); object members (text keys) are skipped.  So one pass gives the
    # JSON type and value with "any element" semantics, and EXISTS is never NULL: NOT and $ne
    # stay two-valued, matching the Python predicate exactly.
    test_sql, test_params = _sql_test(node)
    hit = (f"EXISTS (SELECT 1 FROM json_each({column}, ?) AS je WHERE "
           f"(je.key IS NULL OR typeof(je.key) = 'integer') AND {test_sql})")
    params = [jpath] + test_params
    if node.op in ("ne", "nin"):
        return f"(NOT {hit})", params
    return f"({hit})", params


# ----------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class CompiledFilter:
    """A validated filter.  ``matches`` evaluates it in Python; ``to_sql`` gives a WHERE
    clause over a JSON text column with bound parameters (the connection needs
    :func:`register_sql_functions` for date ranges)."""

    node: Node | None  # None: the empty filter, matches everything
    conditions: int
    spec: Any

    @property
    def matches_all(self) -> bool:
        return self.node is None

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        return True if self.node is None else _predicate(self.node)(metadata)

    def predicate(self) -> Callable[[Mapping[str, Any]], bool]:
        if self.node is None:
            return lambda m: True
        return _predicate(self.node)

    def to_sql(self, column: str = "metadata") -> tuple[str, list[Any]]:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", column):
            raise ValueError(f"bad column name {column!r}")
        if self.node is None:
            return "1", []
        return _sql(self.node, column)


def parse_filter(
    spec: Any,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_conditions: int = DEFAULT_MAX_CONDITIONS,
) -> CompiledFilter:
    """Validate a filter object and compile it; raises InvalidFilter with a located message."""
    if spec is None:
        return CompiledFilter(None, 0, None)
    parser = _Parser(max_depth, max_conditions)
    if isinstance(spec, Mapping) and not spec:
        return CompiledFilter(None, 0, spec)
    node = parser.filter(spec, "filter", 1)
    return CompiledFilter(node, parser.conditions, spec)
