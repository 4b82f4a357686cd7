"""PostgREST conventions on ``/rest/v1``: RPC calls and the table reads and writes the worker needs.

Every call runs under the request's key (``Database.fetchrow_as`` for one statement,
``Database.as_role`` for a transaction), so grants and RLS decide as on Supabase. The SQL is built
from identifiers found in ``pg_catalog`` (quoted) and values that only ever travel as parameters;
Postgres itself renders the JSON, as PostgREST does. Errors keep PostgREST's body ``{code, message,
details, hint}`` and its SQLSTATE → HTTP status mapping.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web
from loguru import logger

from realtime_worker.sql import named_queries
from realtime_worker_devstack.db import Database
from realtime_worker_devstack.faults import Faults

SCHEMA = "public"
QUERIES = named_queries("realtime_worker_devstack.sql", "rest.sql")
SINGULAR = "application/vnd.pgrst.object+json"
# The verified claims of the request's key, set by the devstack's auth middleware.
CLAIMS: web.RequestKey[dict[str, Any]] = web.RequestKey("claims", dict)
_RESERVED = frozenset({"select", "order", "limit", "offset", "on_conflict", "columns"})
_COMPARE = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_IS_VALUES = {"null": "null", "true": "true", "false": "false", "unknown": "unknown"}
_STATUS_PREFIXES = (
    ("08", 503), ("09", 500), ("0L", 403), ("0P", 403), ("25006", 405), ("25", 500), ("28", 403),
    ("2D", 500), ("38", 500), ("39", 500), ("3B", 500), ("40", 500), ("53400", 500), ("53", 503),
    ("54", 500), ("55", 500), ("57", 500), ("58", 500), ("F0", 500), ("HV", 500), ("P0001", 400),
    ("P0", 500), ("XX", 500), ("42883", 404), ("42P01", 404), ("42P17", 500),
    ("23503", 409), ("23505", 409),
)
_CUSTOM_STATUS = re.compile(r"PT[1-5]\d\d")


class RestError(Exception):
    """An answer in PostgREST's error shape."""

    def __init__(self, status: int, code: str, message: str, *,
                 details: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.hint = details, hint

    def response(self) -> web.Response:
        body = {"code": self.code, "details": self.details, "hint": self.hint, "message": self.message}
        return web.json_response(body, status=self.status)


def pg_status(sqlstate: str, role: str) -> int:
    """PostgREST's HTTP status for a SQLSTATE; 42501 is 401 for anon and 403 for a signed-in role.

    A custom SQLSTATE ``PTxyz`` (``raise ... using errcode = 'PT402'``) answers with status xyz.
    """
    if sqlstate == "42501":
        return 401 if role == "anon" else 403
    if _CUSTOM_STATUS.fullmatch(sqlstate):
        return int(sqlstate[2:])
    for prefix, status in _STATUS_PREFIXES:
        if sqlstate.startswith(prefix):
            return status
    return 400


def from_postgres(exc: asyncpg.PostgresError, role: str) -> RestError:
    state = str(exc.sqlstate or "XX000")
    return RestError(pg_status(state, role), state, str(getattr(exc, "message", exc)),
                     details=getattr(exc, "detail", None), hint=getattr(exc, "hint", None))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- the catalog ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    name: str
    args: dict[str, str]  # input argument name → SQL type, in declaration order
    required: frozenset[str]
    returns_set: bool
    returns_void: bool
    sql: dict[frozenset[str], str] = field(default_factory=dict, compare=False)

    def accepts(self, given: frozenset[str]) -> bool:
        return given <= self.args.keys() and self.required <= given


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, str]  # column name → SQL type

    def column(self, name: str) -> str:
        if name not in self.columns:
            raise RestError(400, "42703", f"column {self.name}.{name} does not exist")
        return quote_ident(name)


def _function_from_row(name: str, row: asyncpg.Record) -> Function:
    names, modes, types = list(row["names"]), list(row["modes"]), list(row["types"])
    inputs = [(names[i] if i < len(names) else "", types[i]) for i in range(len(types))
              if not modes or modes[i] in ("i", "b", "v")]
    args = {arg: kind for arg, kind in inputs if arg}
    required = frozenset(arg for arg, _ in inputs[: len(inputs) - int(row["defaults"])] if arg)
    return Function(name, args, required, bool(row["returns_set"]), bool(row["returns_void"]))


class Catalog:
    """Function signatures and table columns of ``public``, read once from pg_catalog and kept."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._functions: dict[str, list[Function]] = {}
        self._tables: dict[str, Table] = {}

    async def function(self, name: str, given: frozenset[str]) -> Function:
        found = self._functions.get(name)
        if found is None:
            async with self._db.admin() as conn:
                rows = await conn.fetch(QUERIES["function_signature"], SCHEMA, name)
            found = [_function_from_row(name, row) for row in rows]
            if found:
                self._functions[name] = found
        for candidate in found:
            if candidate.accepts(given):
                return candidate
        raise _unknown_function(name, given)

    async def table(self, name: str) -> Table:
        found = self._tables.get(name)
        if found is None:
            async with self._db.admin() as conn:
                rows = await conn.fetch(QUERIES["table_columns"], SCHEMA, name)
            if not rows:
                raise RestError(404, "PGRST205",
                                f"Could not find the table '{SCHEMA}.{name}' in the schema cache")
            found = self._tables[name] = Table(name, {r["name"]: r["type"] for r in rows})
        return found


def _unknown_function(name: str, given: frozenset[str]) -> RestError:
    args = ", ".join(sorted(given))
    suffix = f"({args})" if given else " without parameters"
    return RestError(404, "PGRST202",
                     f"Could not find the function {SCHEMA}.{name}{suffix} in the schema cache",
                     hint=None, details="Searched for the function with the given argument names.")


# --- SQL builders -----------------------------------------------------------------------------

_RESULT = ("select count(*), coalesce(json_agg(_t), '[]')::text, (json_agg(_t) -> 0)::text"
           " from ({inner}) _t")


def rpc_sql(fn: Function, given: frozenset[str]) -> str:
    """One statement per (function, argument names), cached on the function."""
    cached = fn.sql.get(given)
    if cached is not None:
        return cached
    names = [name for name in fn.args if name in given]
    call = f"{quote_ident(SCHEMA)}.{quote_ident(fn.name)}(" + ", ".join(
        f"{quote_ident(n)} => _a.{quote_ident(n)}" for n in names) + ")"
    record = ""
    if names:
        columns = ", ".join(f"{quote_ident(n)} {fn.args[n]}" for n in names)
        record = f"json_to_record($1::json) as _a({columns})"
    source = f"{record}, {call}" if record else call
    if fn.returns_void:
        sql = f"select 0, null::text, null::text from (select {call}{' from ' + record if record else ''}) _r"
    elif fn.returns_set:
        sql = ("select count(*), coalesce(json_agg(_r), '[]')::text, (json_agg(_r) -> 0)::text"
               f" from {source} _r")
    else:
        sql = f"select 1, to_json(_r)::text, to_json(_r)::text from {source} _r"
    fn.sql[given] = sql
    return sql


@dataclass
class Query:
    """Filters, order and paging of a table request; values only ever become parameters."""

    table: Table
    conditions: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None
    first_param: int = 1

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${self.first_param + len(self.params) - 1}"

    def where(self) -> str:
        return (" where " + " and ".join(self.conditions)) if self.conditions else ""

    def tail(self) -> str:
        text = (" order by " + ", ".join(self.order)) if self.order else ""
        if self.limit is not None:
            text += f" limit {self.limit}"
        if self.offset is not None:
            text += f" offset {self.offset}"
        return text


def split_list(text: str) -> list[str]:
    """``(a,"b,c",d)`` → ``["a", "b,c", "d"]`` (PostgREST's quoting of list values)."""
    if not (text.startswith("(") and text.endswith(")")):
        raise RestError(400, "PGRST100", f'failed to parse filter (in.{text})')
    items = re.findall(r'"((?:[^"\\]|\\.)*)"|([^,]+)', text[1:-1])
    return [quoted.replace('\\"', '"') if quoted else bare for quoted, bare in items]


def add_filter(query: Query, column: str, expression: str) -> None:
    column_sql = query.table.column(column)
    negate = expression.startswith("not.")
    operator, _, value = expression.removeprefix("not.").partition(".")
    kind = query.table.columns[column]
    if operator in _COMPARE:
        condition = f"{column_sql} {_COMPARE[operator]} {query.param(value)}::text::{kind}"
    elif operator == "in":
        condition = f"{column_sql} = any({query.param(split_list(value))}::text[]::{kind}[])"
    elif operator == "is" and value.lower() in _IS_VALUES:
        condition = f"{column_sql} is {_IS_VALUES[value.lower()]}"
    elif operator in ("like", "ilike"):
        condition = f"{column_sql}::text {operator} {query.param(value.replace('*', '%'))}"
    else:
        raise RestError(400, "PGRST100", f"failed to parse filter ({expression})")
    query.conditions.append(f"not ({condition})" if negate else condition)


def add_order(query: Query, text: str) -> None:
    for term in filter(None, text.split(",")):
        column, *modifiers = term.split(".")
        sql = query.table.column(column)
        for modifier in modifiers:
            words = {"asc": "asc", "desc": "desc", "nullsfirst": "nulls first", "nullslast": "nulls last"}
            if modifier not in words:
                raise RestError(400, "PGRST100", f'failed to parse order ({text})')
            sql += f" {words[modifier]}"
        query.order.append(sql)


def _int_param(name: str, text: str) -> int:
    if not text.isdigit():
        raise RestError(400, "PGRST100", f'failed to parse {name} ({text})')
    return int(text)


def build_query(table: Table, params: Any, *, first_param: int = 1) -> Query:
    query = Query(table, first_param=first_param)
    for key, value in params.items():
        if key == "order":
            add_order(query, value)
        elif key in ("limit", "offset"):
            setattr(query, key, _int_param(key, value))
        elif key not in _RESERVED:
            add_filter(query, key, value)
    return query


def select_list(table: Table, text: str | None) -> str:
    """``select=*`` or ``a,b,alias:c``; embedding and casts are not supported."""
    if text is None or text.strip() in ("", "*"):
        return "*"
    parts = []
    for item in (i.strip() for i in text.split(",")):
        alias, _, column = item.rpartition(":") if ":" in item and "::" not in item else ("", "", item)
        if item == "*":
            parts.append("*")
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column):
            raise RestError(400, "PGRST100", f'failed to parse select parameter ({text})')
        sql = table.column(column)
        parts.append(f"{sql} as {quote_ident(alias)}" if alias else sql)
    return ", ".join(parts)


# --- HTTP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    count: int
    array: str | None
    first: str | None


def _result(row: asyncpg.Record | None) -> Result:
    assert row is not None  # every statement built here returns exactly one row
    return Result(int(row[0]), row[1], row[2])


def _wants_object(request: web.Request) -> bool:
    return SINGULAR in request.headers.get("Accept", "")


def _wants_representation(request: web.Request) -> bool:
    return "return=representation" in request.headers.get("Prefer", "")


def _singular_error(count: int) -> RestError:
    return RestError(406, "PGRST116", "JSON object requested, multiple (or no) rows returned",
                     details=f"The result contains {count} rows")


def _respond(request: web.Request, result: Result, *, status: int = 200) -> web.Response:
    if _wants_object(request):
        return web.Response(text=result.first or "null", status=status,
                            content_type=SINGULAR, charset="utf-8")
    range_header = f"0-{result.count - 1}/*" if result.count else "*/*"
    return web.Response(text=result.array or "[]", status=status, content_type="application/json",
                        charset="utf-8", headers={"Content-Range": range_header})


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except ValueError:
        raise RestError(400, "PGRST102", "Empty or invalid json") from None


class Rest:
    """The ``/rest/v1`` routes."""

    def __init__(self, db: Database, faults: Faults) -> None:
        self._db = db
        self._faults = faults
        self.catalog = Catalog(db)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/rest/v1/rpc/{fn}", self.rpc),
            web.get("/rest/v1/{table}", self.read),
            web.post("/rest/v1/{table}", self.insert),
            web.patch("/rest/v1/{table}", self.update),
            web.delete("/rest/v1/{table}", self.delete),
        ]

    async def rpc(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._rpc)

    async def read(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._read)

    async def insert(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._insert)

    async def update(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._update)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._delete)

    async def _guarded(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._faults.chance(self._faults.rest_error_fraction):
            return _fault_response(self._faults.rest_error_status)
        claims = request[CLAIMS]
        try:
            response: web.StreamResponse = await handler(request, claims)
            return response
        except RestError as err:
            return err.response()
        except asyncpg.PostgresError as exc:
            return from_postgres(exc, str(claims.get("role"))).response()
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            logger.bind(event="devstack.rest.db_unavailable").warning(type(exc).__name__)
            return RestError(503, "PGRST001", "Database client error. Retrying the connection.").response()

    async def _fetch(self, claims: dict[str, Any], sql: str, *args: Any,
                     singular: bool = False) -> Result:
        if not singular:
            return _result(await self._db.fetchrow_as(claims, sql, *args))
        async with self._db.as_role(claims) as conn:
            result = _result(await conn.fetchrow(sql, *args))
            if result.count != 1:
                raise _singular_error(result.count)  # rolls the transaction back, as PostgREST does
        return result

    async def _rpc(self, request: web.Request, claims: dict[str, Any]) -> web.StreamResponse:
        body = await _json_body(request)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise RestError(400, "PGRST102", "Empty or invalid json")
        given = frozenset(body)
        fn = await self.catalog.function(request.match_info["fn"], given)
        args = (body,) if fn.args and given else ()  # the pool's json codec encodes it
        result = await self._fetch(claims, rpc_sql(fn, given), *args,
                                   singular=_wants_object(request) and fn.returns_set)
        if fn.returns_void:
            return web.Response(status=204)
        if fn.returns_set:
            return _respond(request, result)
        return web.Response(text=result.first or "null", content_type="application/json",
                            charset="utf-8")

    async def _read(self, request: web.Request, claims: dict[str, Any]) -> web.StreamResponse:
        table = await self.catalog.table(request.match_info["table"])
        query = build_query(table, request.query)
        inner = (f"select {select_list(table, request.query.get('select'))}"
                 f" from {quote_ident(SCHEMA)}.{quote_ident(table.name)}{query.where()}{query.tail()}")
        result = await self._fetch(claims, _RESULT.format(inner=inner), *query.params,
                                   singular=_wants_object(request))
        return _respond(request, result)

    async def _insert(self, request: web.Request, claims: dict[str, Any]) -> web.StreamResponse:
        table = await self.catalog.table(request.match_info["table"])
        body = await _json_body(request)
        rows = body if isinstance(body, list) else [body]
        if not rows or not all(isinstance(r, dict) for r in rows):
            raise RestError(400, "PGRST102", "Empty or invalid json")
        names = list(dict.fromkeys(key for row in rows for key in row))
        cols = ", ".join(table.column(n) for n in names)
        target = f"{quote_ident(SCHEMA)}.{quote_ident(table.name)}"
        statement = (f"insert into {target} ({cols}) select {cols}"
                     f" from json_populate_recordset(null::{target}, $1::json)")
        return await self._write(request, claims, table, statement, [rows], status=201)

    async def _update(self, request: web.Request, claims: dict[str, Any]) -> web.StreamResponse:
        table = await self.catalog.table(request.match_info["table"])
        body = await _json_body(request)
        if not isinstance(body, dict) or not body:
            raise RestError(400, "PGRST102", "Empty or invalid json")
        cols = ", ".join(table.column(n) for n in body)
        target = f"{quote_ident(SCHEMA)}.{quote_ident(table.name)}"
        query = build_query(table, request.query, first_param=2)
        statement = (f"update {target} set ({cols}) = (select {cols}"
                     f" from json_populate_record(null::{target}, $1::json)){query.where()}")
        return await self._write(request, claims, table, statement, [body, *query.params])

    async def _delete(self, request: web.Request, claims: dict[str, Any]) -> web.StreamResponse:
        table = await self.catalog.table(request.match_info["table"])
        query = build_query(table, request.query)
        statement = f"delete from {quote_ident(SCHEMA)}.{quote_ident(table.name)}{query.where()}"
        return await self._write(request, claims, table, statement, query.params)

    async def _write(self, request: web.Request, claims: dict[str, Any], table: Table,
                     statement: str, args: list[Any], *, status: int = 200) -> web.StreamResponse:
        singular = _wants_object(request)
        if _wants_representation(request):
            columns = select_list(table, request.query.get("select"))
            sql = f"with _w as ({statement} returning *) " + _RESULT.format(
                inner=f"select {columns} from _w")
            result = await self._fetch(claims, sql, *args, singular=singular)
            return _respond(request, result, status=status)
        async with self._db.as_role(claims) as conn:
            outcome = await conn.execute(statement, *args)
            count = int(outcome.rsplit(" ", 1)[-1])
            if singular and count != 1:
                raise _singular_error(count)
        return web.Response(status=201 if status == 201 else 204)


def _fault_response(status: int) -> web.Response:
    body = {"code": "PGRST000" if status == 503 else str(status), "details": "injected by devstack faults",
            "hint": None, "message": "Injected fault"}
    return web.json_response(body, status=status)
