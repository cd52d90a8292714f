"""The metadata filter grammar: every operator, dates, nesting, validation messages, and the
SQL translation agreeing with the Python predicate (real SQLite)."""
from __future__ import annotations

import json
import random
import sqlite3

import pytest

from index.errors import InvalidFilter
from index.filters import parse_filter, parse_iso_timestamp, register_sql_functions

DOCS = [
    {"lang": "en", "year": 2020, "price": 9.5, "tags": ["ml", "nlp"], "draft": False,
     "author": {"name": "Ada", "age": 36}, "published": "2020-03-01"},
    {"lang": "fr", "year": 2022, "price": 20, "tags": ["ml"], "draft": True,
     "author": {"name": "Blaise"}, "published": "2022-06-15T10:30:00Z"},
    {"lang": "en", "year": 2024, "price": 0, "tags": [], "draft": False, "note": None,
     "published": "2024-01-01T01:00:00+02:00"},  # = 2023-12-31T23:00Z
    {"lang": "de", "year": "2024", "price": True, "tags": "nlp",
     "published": "not a date"},
    {"lang": "en", "year": 2023.5, "scores": [1, 5, 9], "published": "2023-07-04 08:00"},
    {},
]


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    register_sql_functions(conn)
    conn.execute("CREATE TABLE documents (iid INTEGER PRIMARY KEY, metadata TEXT NOT NULL)")
    conn.executemany("INSERT INTO documents VALUES (?, ?)",
                     [(i, json.dumps(d, ensure_ascii=False)) for i, d in enumerate(DOCS)])
    return conn


def both(db: sqlite3.Connection, spec: object, docs: list[dict] = DOCS) -> list[int]:
    """Matching indices via the predicate; asserts SQL gives exactly the same set."""
    compiled = parse_filter(spec)
    expected = [i for i, d in enumerate(docs) if compiled.matches(d)]
    sql, params = compiled.to_sql()
    got = [r[0] for r in db.execute(f"SELECT iid FROM documents WHERE {sql} ORDER BY iid",
                                    params)]
    assert got == expected, (spec, sql, params)
    return expected


@pytest.mark.parametrize("spec, expected", [
    ({}, [0, 1, 2, 3, 4, 5]),
    ({"lang": "en"}, [0, 2, 4]),
    ({"lang": "en", "draft": False}, [0, 2]),
    ({"year": 2024}, [2]),  # strict types: the string "2024" does not match
    ({"year": "2024"}, [3]),
    ({"price": 0}, [2]),
    ({"price": 1}, []),  # true is not the number 1
    ({"price": True}, [3]),
    ({"note": None}, [2]),
    ({"author.name": "Ada"}, [0]),
    ({"author.age": {"$gte": 30}}, [0]),
    ({"tags": "ml"}, [0, 1]),  # any element of a list
    ({"tags": "nlp"}, [0, 3]),
    ({"lang": {"$eq": "fr"}}, [1]),
    ({"lang": {"$ne": "en"}}, [1, 3, 5]),  # missing fields match $ne
    ({"tags": {"$ne": "ml"}}, [2, 3, 4, 5]),  # no element equal
    ({"year": {"$gt": 2022}}, [2, 4]),
    ({"year": {"$gte": 2022}}, [1, 2, 4]),
    ({"year": {"$lt": 2022}}, [0]),
    ({"year": {"$lte": 2022}}, [0, 1]),
    ({"year": {"$gt": 2020, "$lt": 2024}}, [1, 4]),
    ({"scores": {"$gt": 8}}, [4]),
    ({"lang": {"$in": ["fr", "de"]}}, [1, 3]),
    ({"year": {"$in": [2020, "2024"]}}, [0, 3]),
    ({"tags": {"$in": ["nlp", "x"]}}, [0, 3]),
    ({"lang": {"$nin": ["en", "fr"]}}, [3, 5]),
    ({"note": {"$exists": True}}, [2]),  # present even though null
    ({"tags": {"$exists": False}}, [4, 5]),
    ({"author.age": {"$exists": True}}, [0]),
    ({"$and": [{"lang": "en"}, {"year": {"$gte": 2023}}]}, [2, 4]),
    ({"$or": [{"lang": "fr"}, {"price": {"$lt": 5}}]}, [1, 2]),
    ({"$not": {"lang": "en"}}, [1, 3, 5]),
    ({"$not": {"$or": [{"lang": "en"}, {"lang": "fr"}]}}, [3, 5]),
    ({"lang": "en", "$or": [{"draft": True}, {"tags": "nlp"}]}, [0]),
    ({"$and": [{"$or": [{"year": 2020}, {"year": 2022}]}, {"$not": {"draft": True}}]}, [0]),
])
def test_operators(db: sqlite3.Connection, spec: object, expected: list[int]) -> None:
    assert both(db, spec) == expected


@pytest.mark.parametrize("spec, expected", [
    ({"published": {"$gte": "2022-01-01"}}, [1, 2, 4]),
    ({"published": {"$lt": "2022-06-15T10:30:00Z"}}, [0]),
    ({"published": {"$lte": "2022-06-15T12:30:00+02:00"}}, [0, 1]),  # same instant
    ({"published": {"$gt": "2023-12-31T22:59:59Z", "$lt": "2023-12-31T23:00:01Z"}}, [2]),
    ({"published": {"$gte": "2023-07-04T08:00", "$lte": "2023-07-04T08:00:00.000Z"}}, [4]),
    ({"published": {"$lt": "3000-01-01"}}, [0, 1, 2, 4]),  # "not a date" never matches
    ({"published": "2020-03-01"}, [0]),  # equality compares strings exactly
    ({"published": "2020-03-01T00:00:00Z"}, []),
])
def test_date_ranges(db: sqlite3.Connection, spec: object, expected: list[int]) -> None:
    assert both(db, spec) == expected


def test_iso_timestamp_parsing() -> None:
    assert parse_iso_timestamp("1970-01-01") == 0
    assert parse_iso_timestamp("1970-01-01T00:00:01Z") == 1_000_000
    assert parse_iso_timestamp("1970-01-01T01:00:00+01:00") == 0
    assert parse_iso_timestamp("1970-01-01 00:00:00.5") == 500_000
    for bad in ("2024-02-30", "2024-13-01", "20240101", "2024", "yesterday", "", 5, None,
                "2024-01-01T25:00", "2024-01-01Tx"):
        assert parse_iso_timestamp(bad) is None, bad


@pytest.mark.parametrize("spec, fragment", [
    ({"year": {"$gtt": 1}}, "filter.year.$gtt: unknown operator '$gtt'"),
    ({"$nor": []}, "unknown operator '$nor'"),
    ({"$and": []}, "filter.$and: expects a non-empty list"),
    ({"$or": {"a": 1}}, "filter.$or: expects a non-empty list"),
    ({"$or": [{"a": 1}, 3]}, "filter.$or[1]: a filter must be a JSON object"),
    ({"$not": [1]}, "filter.$not: a filter must be a JSON object"),
    ({"year": {"$gt": "soon"}}, "filter.year.$gt: $gt expects a number or an ISO-8601"),
    ({"year": {"$lt": True}}, "$lt expects a number or an ISO-8601 date string, got a boolean"),
    ({"year": {"$lte": None}}, "got null"),
    ({"tags": {"$in": []}}, "filter.tags.$in: $in expects a non-empty list of values, got an "
                            "empty list"),
    ({"tags": {"$in": "ml"}}, "$in expects a non-empty list of values, got a string"),
    ({"tags": {"$nin": [["x"]]}}, "filter.tags.$nin[0]: $nin expects a string, number"),
    ({"tags": ["ml"]}, "use $in for a list of values"),
    ({"a": {"$exists": 1}}, "$exists expects true or false"),
    ({"a": {}}, "expects a value or an object of operators"),
    ({"a": {"b": 1}}, "to match a nested field use a dotted path such as 'a.subfield'"),
    ({"a": {"$eq": 1, "b": 2}}, "an object value must contain only operators"),
    ({"a..b": 1}, "empty segment"),
    ({".a": 1}, "empty segment"),
    ({'a"b': 1}, "field names cannot contain"),
    ({"a\\b": 1}, "field names cannot contain"),
    ({"a\nb": 1}, "field names cannot contain"),
    ({"a": float("nan")}, "finite number"),
    ({"a": {"$gt": float("inf")}}, "finite number"),
    ([{"a": 1}], "filter: a filter must be a JSON object, got a list"),
    ("lang = 'en'", "a filter must be a JSON object, got a string"),
])
def test_invalid_filters_name_the_offending_part(spec: object, fragment: str) -> None:
    with pytest.raises(InvalidFilter) as info:
        parse_filter(spec)
    assert fragment in info.value.message
    assert info.value.type == "invalid_filter" and info.value.http_status == 400
    assert "location" in info.value.details


def test_depth_and_condition_limits() -> None:
    spec: dict = {"a": 1}
    for _ in range(7):
        spec = {"$not": spec}
    parse_filter(spec)  # depth 8: allowed by default
    with pytest.raises(InvalidFilter, match="nested deeper than 8 levels"):
        parse_filter({"$not": spec})
    parse_filter({"$not": spec}, max_depth=9)
    with pytest.raises(InvalidFilter, match="nested deeper than 2"):
        parse_filter({"$and": [{"$or": [{"a": 1}]}]}, max_depth=2)

    many = {"$or": [{"n": i} for i in range(256)]}
    assert parse_filter(many).conditions == 256
    with pytest.raises(InvalidFilter, match="too many conditions"):
        parse_filter({"$or": [{"n": i} for i in range(257)]})
    with pytest.raises(InvalidFilter, match=r"too many conditions \(the limit is 3\)"):
        parse_filter({"a": {"$gt": 1, "$lt": 5}, "b": 1, "c": 2}, max_conditions=3)
    with pytest.raises(InvalidFilter, match="at most 1024"):
        parse_filter({"a": {"$in": list(range(1025))}})
    # A pathological nesting fails fast with InvalidFilter, not a RecursionError.
    deep: dict = {"a": 1}
    for _ in range(5000):
        deep = {"$not": deep}
    with pytest.raises(InvalidFilter):
        parse_filter(deep)


@pytest.mark.parametrize("field", [
    "x'); DROP TABLE documents; --", "a' OR '1'='1", "$.x", "a]", "a[0]", "*", "x`y",
    "naïve ключ", "a b", "a/b",
])
def test_injection_looking_field_names_are_harmless(db: sqlite3.Connection, field: str) -> None:
    if field.startswith("$"):
        with pytest.raises(InvalidFilter, match="unknown operator"):
            parse_filter({field: 1})
        return
    docs = [{field: "v"}, {field: "w"}, {"other": 1}]
    conn = sqlite3.connect(":memory:")
    register_sql_functions(conn)
    conn.execute("CREATE TABLE documents (iid INTEGER PRIMARY KEY, metadata TEXT NOT NULL)")
    conn.executemany("INSERT INTO documents VALUES (?, ?)",
                     [(i, json.dumps(d, ensure_ascii=False)) for i, d in enumerate(docs)])
    segments = field.split(".")
    if len(segments) == 1:
        assert both(conn, {field: "v"}, docs) == [0]
        assert both(conn, {field: {"$in": ["' OR 1=1 --", "w"]}}, docs) == [1]
    assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 3
    assert both(db, {"lang": "en' OR '1'='1"}) == []
    assert both(db, {"lang": {"$in": ["x\"); DROP TABLE documents; --"]}}) == []
    assert db.execute("SELECT count(*) FROM documents").fetchone()[0] == len(DOCS)


def test_sql_never_contains_user_values() -> None:
    spec = {"evil'field": {"$in": ["'; DROP TABLE x; --", 7]}, "$or": [{"a.b": "c'"}]}
    sql, params = parse_filter(spec).to_sql()
    assert "DROP" not in sql and "evil" not in sql and "c'" not in sql
    assert "'; DROP TABLE x; --" in params and '$."evil\'field"' in params


def test_sql_matches_predicate_on_random_filters() -> None:
    """Property test: random documents and random filters, SQL == predicate."""
    rng = random.Random(7)
    values = [0, 1, 2, 1.5, -3, True, False, None, "a", "b", "", "2024-01-01",
              "2023-06-01T12:00:00Z", [1, "a"], [], [True, None], {"x": 1}, [[1]]]
    docs = []
    for _ in range(300):
        doc = {k: rng.choice(values) for k in ("p", "q", "r") if rng.random() < 0.8}
        if rng.random() < 0.5:
            doc["n"] = {"x": rng.choice(values)}
        docs.append(doc)
    conn = sqlite3.connect(":memory:")
    register_sql_functions(conn)
    conn.execute("CREATE TABLE documents (iid INTEGER PRIMARY KEY, metadata TEXT NOT NULL)")
    conn.executemany("INSERT INTO documents VALUES (?, ?)",
                     [(i, json.dumps(d)) for i, d in enumerate(docs)])
    scalars = [0, 1, 1.5, -3, True, False, None, "a", "b", ""]
    bounds = [0, 1, 1.5, -10, "2023-12-31", "2024-01-01T00:00:00Z"]

    def leaf() -> dict:
        field = rng.choice(["p", "q", "r", "n.x", "missing"])
        op = rng.choice(["eq", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin",
                         "$exists"])
        if op == "eq":
            return {field: rng.choice(scalars)}
        if op in ("$in", "$nin"):
            return {field: {op: rng.sample(scalars, rng.randint(1, 4))}}
        if op == "$exists":
            return {field: {op: rng.random() < 0.5}}
        operand = rng.choice(bounds) if op.startswith(("$g", "$l")) else rng.choice(scalars)
        return {field: {op: operand}}

    def tree(depth: int) -> dict:
        if depth == 0 or rng.random() < 0.4:
            return leaf()
        op = rng.choice(["$and", "$or", "$not"])
        if op == "$not":
            return {"$not": tree(depth - 1)}
        return {op: [tree(depth - 1) for _ in range(rng.randint(1, 3))]}

    for _ in range(300):
        both(conn, tree(3), docs)
