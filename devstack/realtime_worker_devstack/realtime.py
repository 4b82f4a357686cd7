"""The devstack's Supabase Realtime: Phoenix channels over aiohttp websockets, fed by Postgres.

What it speaks (see the Realtime protocol reference): ``GET /realtime/v1/websocket``
(and ``/socket/websocket``) with ``apikey``/``x-api-key`` and ``vsn`` 1.0.0 (object frames) or
2.0.0 (array frames); ``heartbeat``, ``phx_join``/``phx_reply``, the ``system`` message that
follows a join, ``postgres_changes`` frames, ``phx_leave``/``phx_close`` and ``access_token``.

Where changes come from: ``start()`` installs, as the database owner, a trigger function in the
devstack-only schema ``_devstack`` and an AFTER INSERT/UPDATE/DELETE row trigger on every table
of the ``supabase_realtime`` publication (checked again on every join, so tables published later
get one). The trigger ``pg_notify``s the row as ``to_jsonb`` under ``timezone=UTC``, so values are
encoded as the real server encodes them. One LISTEN connection feeds one consumer task, so
deliveries keep commit order.

Payload size: NOTIFY payloads must stay under 8000 bytes. A larger change is written to the
unlogged table ``_devstack.realtime_overflow`` and only its id is notified; the consumer reads
(and deletes) it in turn, so big rows arrive whole and in order. Above the real server's
``max_record_bytes`` (1 MiB) the frame carries ``errors: ["Error 413: Payload Too Large"]`` and
only values of at most 64 bytes, as the real server does.

Filters: ``column=op.value`` with ``eq, neq, lt, lte, gt, gte, in, is, isdistinct``, a ``not.``
prefix and comma-separated AND. Filter values are cast to the column's type by Postgres at join
time and compared with the row's JSON values: equality exactly, order numerically for numbers and
by text otherwise. ``like, ilike, match, imatch`` are refused with the parse error older servers
give.

Authorization: the join's ``access_token`` (else the socket's key) gives the subscriber's claims.
Columns the role may not SELECT are left out; for a role other than ``service_role`` each
INSERT/UPDATE on a table with RLS is checked with ``select 1 … where <pk> = …`` under the role
(deletes are not checked, and carry only the primary key, as on Supabase).

Broadcast from Database: a devstack trigger on ``realtime.messages`` notifies every committed
broadcast row on the same channel; it goes to the channels joined to its topic with the same
privacy. A private join (``config.private: true``) is authorised as the real server does it: a
probe row is inserted as the owner and read back as the joining role with ``realtime.topic()``
set, so the project's RLS policies on ``realtime.messages`` decide; a refusal answers
``Unauthorized: You do not have permissions to read from this Channel topic: <topic>``. A private
join may ask for a replay (``config.broadcast.replay``: since, limit ≤ 25); replayed messages carry
``meta.replayed: true`` and are not delivered live again to that channel (``broadcast.py``).

Timing (the fault knob ``realtime_timing``): ``immediate`` (the default) delivers every change
as soon as its NOTIFY arrives. ``server`` models the real server: ``postgres_changes`` are read
by a poller (supabase/realtime ``replication_poller.ex``, ``db_settings.ex``) that takes at most
100 changes per poll, polls again at once after delivering some, after 100 ms + 50..100 ms of
jitter when it read changes nobody subscribed to, and after 500 ms when idle; Broadcast is
streamed (the server reads ``realtime.messages`` by logical replication), so it stays immediate.

The component binds nothing: the devstack server mounts ``routes()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import asyncpg
import jwt
from aiohttp import WSCloseCode, WSMsgType, web
from loguru import logger

from realtime_worker.sql import named_queries
from realtime_worker_devstack.broadcast import (
    JoinRefused,
    Message,
    Replay,
    is_private,
    message_from,
    replay_of,
    unauthorized,
)
from realtime_worker_devstack.db import Database
from realtime_worker_devstack.faults import Faults
from realtime_worker_devstack.keys import InvalidKey, Keys

PUBLICATION = "supabase_realtime"
NOTIFY_CHANNEL = "_devstack_realtime"
TRIGGER = "_devstack_realtime"
MAX_FRAME_BYTES = 5_000_000
MAX_RECORD_BYTES = 1024 * 1024
SMALL_VALUE_BYTES = 64
VSNS = ("1.0.0", "2.0.0")
PATHS = ("/realtime/v1/websocket", "/socket/websocket")
SERVICE_ROLE = "service_role"
EVENTS = ("INSERT", "UPDATE", "DELETE")
FILTER_OPS = ("eq", "neq", "lt", "lte", "gt", "gte", "in", "is", "isdistinct")
IS_VALUES = ("null", "true", "false", "unknown")
REFUSED_JOIN = "UnableToConnectToProject: Realtime was unable to connect to the project database"
SUBSCRIBED = "Subscribed to PostgreSQL"
QUERIES = named_queries("realtime_worker_devstack.sql", "realtime.sql")
JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
POLL_INTERVAL = 0.1  # poll_interval_ms
POLL_IDLE_MULTIPLIER = 5
POLL_MAX_CHANGES = 100  # poll_max_changes
POLL_JITTER = (0.05, 0.1)

TableKey = tuple[str, str]


class SubscriptionError(Exception):
    """A binding the server cannot subscribe; the text is the ``system`` message sent."""


# ---------------------------------------------------------------------------------------------
# Bindings and filters (pure)


@dataclass(frozen=True)
class Filter:
    """One ``column=op.value`` condition; ``value`` is the JSON form once cast by Postgres."""

    column: str
    op: str
    raw: str
    negate: bool = False
    value: Any = None

    def log(self) -> str:
        return f'{{{_inspect_str(self.column)}, {_inspect_str(self.op)}, {_inspect_str(self.raw)}, ' \
            f'{str(self.negate).lower()}}}'


@dataclass(frozen=True)
class BindingSpec:
    """A ``postgres_changes`` binding as parsed from the join (before it meets the database)."""

    event: str
    schema: str
    table: str
    filters: tuple[Filter, ...]
    select: tuple[str, ...] | None

    def log(self) -> str:
        filters = "[" + ", ".join(f.log() for f in self.filters) + "]"
        select = "nil" if self.select is None else "[" + ", ".join(map(_inspect_str, self.select)) + "]"
        return f"event: {self.event}, schema: {self.schema}, table: {self.table}, " \
            f"filters: {filters}, select: {select}"


def _inspect_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _inspect_map(params: dict[str, Any]) -> str:
    return "%{" + ", ".join(f"{_inspect_str(k)} => {json.dumps(v)}" for k, v in params.items()) + "}"


def binding_id(params: dict[str, Any]) -> int:
    """A deterministic, non-zero id for a binding (the real server uses ``phash2``)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return (zlib.crc32(canonical.encode()) & 0x7FFFFFFF) or 1


def parse_binding(params: dict[str, Any]) -> BindingSpec:
    """The binding, or SubscriptionError with the real server's message."""
    event = _action(params.get("event"))
    select = _parse_select(params)
    schema, table, filter_text = params.get("schema"), params.get("table"), params.get("filter")
    if isinstance(schema, str) and isinstance(table, str) and isinstance(filter_text, str):
        return _spec(event, schema, table, parse_filter(filter_text), select)
    if isinstance(schema, str) and isinstance(table, str) and "filter" not in params:
        return _spec(event, schema, table, (), select)
    if isinstance(schema, str) and "table" not in params and "filter" not in params:
        return _spec(event, schema, "*", (), select)
    if isinstance(table, str) and "schema" not in params and "filter" not in params:
        return _spec(event, "public", table, (), select)
    raise SubscriptionError("No subscription params provided. Please provide at least a `schema` or "
                            f"`table` to subscribe to: {_inspect_map(params)}")


def _spec(event: str, schema: str, table: str, filters: tuple[Filter, ...],
          select: tuple[str, ...] | None) -> BindingSpec:
    if select is not None and "*" in (schema, table):
        raise SubscriptionError("Column selection is not supported for wildcard subscriptions. "
                                "Provide an explicit schema and table name.")
    return BindingSpec(event, schema, table, filters, select)


def _action(event: Any) -> str:
    upper = event.upper() if isinstance(event, str) else "*"
    return upper if upper in EVENTS else "*"


def _parse_select(params: dict[str, Any]) -> tuple[str, ...] | None:
    select = params.get("select")
    if isinstance(select, str):
        raise SubscriptionError("Error parsing `select` params: expected a list of column name strings, "
                                'e.g. select: ["col1", "col2"]')
    if isinstance(select, list):
        names = tuple(c for c in select if isinstance(c, str))
        return names or None
    return None


def parse_filter(text: str) -> tuple[Filter, ...]:
    """``col=op.value[,col=op.value…]``; SubscriptionError ("Error parsing `filter` params…")."""
    if not text.strip():
        return ()
    return tuple(_parse_segment(segment) for segment in _split_top_level(text.strip()))


def _parse_error(reason: str) -> SubscriptionError:
    return SubscriptionError(f"Error parsing `filter` params: {reason}")


def _parse_segment(segment: str) -> Filter:
    trimmed = segment.strip()
    if not trimmed:
        raise _parse_error("filter must not contain empty segments (check for extra commas)")
    column, eq, rest = trimmed.partition("=")
    if not eq:
        raise _parse_error(f"[{_inspect_str(trimmed)}]")
    negate = rest.startswith("not.")
    op, dot, value = rest.removeprefix("not.").partition(".")
    if not dot:
        raise _parse_error(f"[{_inspect_str(op)}]")
    if op not in FILTER_OPS:
        raise _parse_error(f"[{_inspect_str(op)}, {_inspect_str(value)}]")
    if op == "in":
        if len(value) < 2 or value[0] != "(" or value[-1] != ")":
            raise _parse_error("`in` filter value must be wrapped by parentheses")
        return Filter(column, op, "{" + value[1:-1] + "}", negate)
    return Filter(column, op, _unquote(value), negate)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char in "()":
            depth = depth + 1 if char == "(" else max(0, depth - 1)
        elif not quoted and char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def passes(filters: Iterable[Filter], row: dict[str, Any] | None) -> bool:
    """Whether ``row`` satisfies every filter (a missing column or a null fails, as in SQL)."""
    return all(_passes(f, row) for f in filters)


def _passes(f: Filter, row: dict[str, Any] | None) -> bool:
    if row is None or f.column not in row:
        return False
    value = row[f.column]
    if f.op == "is":
        return (value is _IS[f.raw] if f.raw != "unknown" else value is None) != f.negate
    if f.op == "isdistinct":
        return bool(value != f.value) != f.negate
    if value is None:
        return False
    result = _compare(f.op, value, f.value)
    return result is not None and result != f.negate


_IS: dict[str, Any] = {"null": None, "true": True, "false": False}


def _compare(op: str, value: Any, target: Any) -> bool | None:
    try:
        if op == "eq":
            return bool(value == target)
        if op == "neq":
            return bool(value != target)
        if op == "in":
            return bool(value in target)
        if isinstance(value, bool) or isinstance(target, bool):
            value, target = str(value), str(target)
        if op == "lt":
            return bool(value < target)
        if op == "lte":
            return bool(value <= target)
        if op == "gt":
            return bool(value > target)
        return bool(value >= target)
    except TypeError:
        return None


# ---------------------------------------------------------------------------------------------
# Tables and changes


@dataclass(frozen=True)
class Table:
    """What a frame needs to know about a published table, read once per join."""

    schema: str
    name: str
    oid: int
    columns: tuple[dict[str, str], ...]
    sql_types: dict[str, str]
    pk: tuple[str, ...]
    rls: bool
    replica_identity: str

    @property
    def column_names(self) -> frozenset[str]:
        return frozenset(c["name"] for c in self.columns)

    @cached_property
    def rls_sql(self) -> str:
        where = " and ".join(f"{_ident(c)} = ${i}::text::{self.sql_types[c]}"
                             for i, c in enumerate(self.pk, start=1))
        return f"select 1 from {_ident(self.schema)}.{_ident(self.name)} where {where}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(slots=True)
class Change:
    """One row change as the trigger notified it."""

    schema: str
    table: str
    type: str
    commit_timestamp: str
    record: dict[str, Any] | None
    old: dict[str, Any] | None
    oversized: bool

    @property
    def key(self) -> TableKey:
        return (self.schema, self.table)


def change_from(body: dict[str, Any], size: int) -> Change:
    return Change(body["schema"], body["table"], body["type"], body["commit_timestamp"],
                  body.get("record"), body.get("old_record"), size > MAX_RECORD_BYTES)


def identity(change: Change, table: Table) -> dict[str, Any] | None:
    """The old row as logical replication carries it: the replica identity's columns."""
    old = change.old
    if old is None or table.replica_identity == "n":
        return None
    if table.replica_identity == "f":
        return old
    return {c: old.get(c) for c in table.pk} if table.pk else None


def old_record(change: Change, table: Table) -> dict[str, Any] | None:
    """``old_record``: the identity, cut to the primary key for a DELETE on a table with RLS."""
    row = identity(change, table)
    if row is not None and change.type == "DELETE" and table.rls:
        return {c: row[c] for c in table.pk if c in row}
    return row


def build_data(change: Change, table: Table, hidden: frozenset[str]) -> dict[str, Any]:
    """The ``data`` of a ``postgres_changes`` frame for a subscriber that cannot see ``hidden``."""
    data: dict[str, Any] = {
        "schema": change.schema, "table": change.table, "type": change.type,
        "commit_timestamp": change.commit_timestamp,
        "columns": [c for c in table.columns if c["name"] not in hidden] if hidden else table.columns,
    }
    if change.type != "DELETE":
        data["record"] = _visible_values(change.record, hidden, change.oversized)
    if change.type != "INSERT":
        data["old_record"] = _visible_values(old_record(change, table), hidden, change.oversized)
    data["errors"] = ["Error 413: Payload Too Large"] if change.oversized else None
    return data


def _visible_values(row: dict[str, Any] | None, hidden: frozenset[str], oversized: bool
                    ) -> dict[str, Any] | None:
    if row is None or (not hidden and not oversized):
        return row
    return {k: v for k, v in row.items()
            if k not in hidden and not (oversized and len(JSON(v).encode()) > SMALL_VALUE_BYTES)}


def _pk_text(value: Any) -> str:
    return value if isinstance(value, str) else JSON(value)


# ---------------------------------------------------------------------------------------------
# Sockets and channels


class Frame(NamedTuple):
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


@dataclass(frozen=True)
class Target:
    """How one binding applies to one table."""

    filters: tuple[Filter, ...]
    hidden: frozenset[str]


@dataclass(frozen=True)
class Binding:
    id: int
    event: str
    targets: dict[TableKey, Target]


@dataclass
class Channel:
    topic: str
    join_ref: str | None
    claims: dict[str, Any]
    params: list[dict[str, Any]] = field(default_factory=list)
    bindings: tuple[Binding, ...] = ()
    topic_json: str = ""
    private: bool = False
    replayed: set[str] = field(default_factory=set)  # ids sent by the join's replay

    def __post_init__(self) -> None:
        self.topic_json = JSON(self.topic)

    @property
    def name(self) -> str:
        return self.topic.removeprefix("realtime:")

    @property
    def role(self) -> str:
        return str(self.claims.get("role"))

    def matches(self, change: Change, table: Table) -> dict[frozenset[str], list[int]]:
        """Matching binding ids, grouped by the columns hidden from them."""
        groups: dict[frozenset[str], list[int]] = {}
        for binding in self.bindings:
            target = binding.targets.get(change.key)
            if target is None or binding.event not in ("*", change.type):
                continue
            if target.filters and not _filters_pass(target.filters, change, table):
                continue
            groups.setdefault(target.hidden, []).append(binding.id)
        return groups


def _filters_pass(filters: tuple[Filter, ...], change: Change, table: Table) -> bool:
    """Filters see the new row; a DELETE's only the replica identity (so they rarely match it)."""
    if change.type == "DELETE":
        return passes(filters, identity(change, table))
    return passes(filters, change.record)


@dataclass(eq=False)
class Socket:
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    v2: bool
    claims: dict[str, Any]
    channels: dict[str, Channel] = field(default_factory=dict)

    def encode(self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> str:
        if self.v2:
            return JSON([join_ref, ref, topic, event, payload])
        return JSON({"topic": topic, "event": event, "payload": payload, "ref": ref})

    def change_frame(self, channel: Channel, ids: list[int], data_json: str) -> str:
        payload = '{"ids":' + JSON(ids) + ',"data":' + data_json + "}"
        if self.v2:
            return '[null,null,' + channel.topic_json + ',"postgres_changes",' + payload + "]"
        return '{"topic":' + channel.topic_json + ',"event":"postgres_changes","payload":' + payload \
            + ',"ref":null}'

    def broadcast_frame(self, channel: Channel, payload: dict[str, Any]) -> str:
        return self.encode(None, None, channel.topic, "broadcast", payload)

    async def send(self, text: str) -> bool:
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            return False
        return True


# ---------------------------------------------------------------------------------------------
# The server


class RealtimeServer:
    """Supabase Realtime's ``postgres_changes`` over Phoenix channels, for the devstack."""

    def __init__(self, db: Database, keys: Keys, faults: Faults, *,
                 connect_error_delay: float = 0.0, join_error_delay: float = 0.0) -> None:
        self.db = db
        self.keys = keys
        self.faults = faults
        self.connect_error_delay = connect_error_delay
        self.join_error_delay = join_error_delay
        self.subscribed = 0
        self.events_sent = 0
        self.events_dropped = 0
        self.connections = 0
        self._sockets: set[Socket] = set()
        self._tables: dict[TableKey, Table] = {}
        self._interest: dict[TableKey, set[str]] = {}
        self._queue: asyncio.Queue[tuple[float, int, dict[str, Any]]] = asyncio.Queue()
        self._polled: deque[tuple[float, int, dict[str, Any]]] = deque()  # for the modelled poller
        self.poll_batches: deque[int] = deque(maxlen=100)  # changes read by the last polls
        self._publication_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._listen_conn: asyncpg.Connection | None = None
        self._listen_lost = asyncio.Event()
        self._sync_prefix = f"{id(self):x}:"
        self._sync_count = 0
        self._sync_waiters: dict[str, asyncio.Future[None]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.get(path, self._handle) for path in PATHS]

    async def start(self) -> None:
        """Install the triggers and start listening (the database must be open)."""
        async with self.db.admin() as conn, conn.transaction():
            await conn.execute(QUERIES["install"])
        await self.sync_publication()
        await self._listen()
        self._tasks = [asyncio.create_task(self._consume(), name="realtime-consume"),
                       asyncio.create_task(self._keep_listening(), name="realtime-listen"),
                       asyncio.create_task(self._poll(), name="realtime-poller")]
        for task in self._tasks:
            task.add_done_callback(_log_crash)
        logger.bind(event="devstack.realtime.started").info("realtime server listening for changes")

    async def stop(self) -> None:
        """Close every socket and the LISTEN connection."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for waiter in self._sync_waiters.values():
            waiter.cancel()
        await asyncio.gather(*(self._close_socket(s) for s in list(self._sockets)))
        if self._listen_conn is not None:
            await self._listen_conn.close(timeout=2)
            self._listen_conn = None

    async def sync(self) -> None:
        """Return once every change committed before this call has been dispatched (or dropped).

        A marker NOTIFY goes through the same queue as the changes, behind every earlier commit.
        """
        self._sync_count += 1
        marker = f"{self._sync_prefix}{self._sync_count}"
        waiter = self._sync_waiters[marker] = asyncio.get_running_loop().create_future()
        try:
            async with self.db.admin() as conn:
                await conn.execute("select pg_notify($1, $2)", NOTIFY_CHANNEL, JSON({"sync": marker}))
            await waiter
        finally:
            self._sync_waiters.pop(marker, None)

    def stats(self) -> dict[str, int]:
        return {"subscribed": self.subscribed, "events_sent": self.events_sent,
                "events_dropped": self.events_dropped, "connections": self.connections,
                "open_sockets": len(self._sockets), "joined_channels": self.joined_channels}

    @property
    def joined_channels(self) -> int:
        return sum(len(s.channels) for s in self._sockets)

    # -- faults ----------------------------------------------------------------------------

    async def cut_sockets(self) -> None:
        """Abort every websocket like a network cut: no close frame, the client sees a loss."""
        for sock in list(self._sockets):
            sock.channels.clear()
            if sock.transport is not None:
                sock.transport.abort()
        logger.bind(event="devstack.realtime.sockets_cut", count=len(self._sockets)).info("sockets cut")

    async def close_channels(self, message: str | None = None) -> None:
        """Close every joined channel as the server does (rate limit, token expiry): ``phx_close``.

        With ``message``, a channel-level ``system`` error carrying it goes first.
        """
        for sock in list(self._sockets):
            for channel in list(sock.channels.values()):
                await self._shutdown_channel(sock, channel, message)
        logger.bind(event="devstack.realtime.channels_closed").info("channels closed")

    # -- LISTEN and dispatch ---------------------------------------------------------------

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.db.dsn)
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        conn.add_termination_listener(lambda _conn: self._listen_lost.set())
        self._listen_conn = conn

    async def _keep_listening(self) -> None:
        while True:
            await self._listen_lost.wait()
            self._listen_lost.clear()
            logger.bind(event="devstack.realtime.listen_lost").warning("LISTEN connection lost; reconnecting")
            await self._reconnect_listener()

    async def _reconnect_listener(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._listen()
                return
            except (OSError, asyncpg.PostgresError) as exc:
                logger.bind(event="devstack.realtime.listen_retry", error=type(exc).__name__).warning(
                    str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        text = str(payload)
        due = time.monotonic() + self.faults.realtime_delay_seconds
        self._queue.put_nowait((due, len(text), json.loads(text)))

    async def _consume(self) -> None:
        while True:
            due, size, body = await self._queue.get()
            try:
                await self._process(due, size, body)
            except Exception as exc:  # one bad change must not stop every later delivery
                logger.bind(event="devstack.realtime.dispatch_failed", error=type(exc).__name__).opt(
                    exception=exc).error("a change could not be delivered")

    async def _process(self, due: float, size: int, body: dict[str, Any]) -> None:
        if "overflow" in body:
            size, body = await self._fetch_overflow(int(body["overflow"]))
        if "broadcast" in body:
            await _wait_until(due)
            await self._broadcast(message_from(body["broadcast"]))
        elif self.faults.realtime_timing == "server" or self._polled:
            self._polled.append((due, size, body))  # the poller takes it (and keeps the order)
        else:
            await self._change(due, size, body)

    async def _change(self, due: float, size: int, body: dict[str, Any]) -> bool:
        """Deliver one change (or release a sync marker); whether any channel matched it."""
        if "sync" in body:
            waiter = self._sync_waiters.get(body["sync"])
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return False
        if not any(s.channels for s in self._sockets):
            return False
        await _wait_until(due)
        change = change_from(body, size)
        table = self._tables.get(change.key)
        return table is not None and await self._dispatch(change, table)

    async def _poll(self) -> None:
        """The modelled replication poller: at most 100 changes a poll, then the real cadence."""
        while True:
            batch = [self._polled.popleft() for _ in range(min(len(self._polled), POLL_MAX_CHANGES))]
            changes = sum("sync" not in body for _, _, body in batch)
            if changes:
                self.poll_batches.append(changes)
            delivered = 0
            for due, size, body in batch:
                try:
                    delivered += await self._change(due, size, body)
                except Exception as exc:
                    logger.bind(event="devstack.realtime.dispatch_failed", error=type(exc).__name__).opt(
                        exception=exc).error("a change could not be delivered")
            await asyncio.sleep(self._next_poll(delivered, changes > 0))

    def _next_poll(self, delivered: int, read_changes: bool) -> float:
        if delivered:
            return 0.0
        if read_changes:
            return POLL_INTERVAL + self.faults.rng.uniform(*POLL_JITTER)
        return POLL_INTERVAL * POLL_IDLE_MULTIPLIER

    async def _fetch_overflow(self, ref: int) -> tuple[int, dict[str, Any]]:
        async with self.db.admin() as conn:
            text: str | None = await conn.fetchval(
                "delete from _devstack.realtime_overflow where id = $1 returning payload", ref)
        if text is None:
            raise KeyError(f"overflow change {ref} is gone")
        return len(text.encode()), json.loads(text)

    async def _dispatch(self, change: Change, table: Table) -> bool:
        checks: list[tuple[Socket, Channel, dict[frozenset[str], list[int]]]] = []
        encoded: dict[frozenset[str], str] = {}
        matched = False
        for sock in list(self._sockets):
            for channel in list(sock.channels.values()):
                groups = channel.matches(change, table)
                matched = matched or bool(groups)
                if not groups or self._dropped():
                    continue
                if channel.role != SERVICE_ROLE and table.rls and change.type != "DELETE":
                    checks.append((sock, channel, groups))
                else:
                    await self._deliver(sock, channel, groups, change, table, encoded)
        for sock, channel, groups in checks:
            if await self._may_read(channel, table, change):
                await self._deliver(sock, channel, groups, change, table, encoded)
        return matched

    async def _broadcast(self, message: Message) -> None:
        """A committed broadcast row to every channel of its topic with the same privacy."""
        payload: dict[str, Any] | None = None
        for sock in list(self._sockets):
            for channel in list(sock.channels.values()):
                if channel.name != message.topic or channel.private != message.private:
                    continue
                if message.id in channel.replayed or self._dropped():
                    continue
                payload = payload or message.frame_payload()
                if await sock.send(sock.broadcast_frame(channel, payload)):
                    self.events_sent += 1

    def _dropped(self) -> bool:
        if self.faults.chance(self.faults.realtime_drop_fraction):
            self.events_dropped += 1
            return True
        return False

    async def _deliver(self, sock: Socket, channel: Channel, groups: dict[frozenset[str], list[int]],
                       change: Change, table: Table, encoded: dict[frozenset[str], str]) -> None:
        for hidden, ids in groups.items():
            data_json = encoded.get(hidden)
            if data_json is None:
                data_json = encoded[hidden] = JSON(build_data(change, table, hidden))
            if await sock.send(sock.change_frame(channel, ids, data_json)):
                self.events_sent += 1

    async def _may_read(self, channel: Channel, table: Table, change: Change) -> bool:
        record = change.record or {}
        args = [_pk_text(record.get(c)) for c in table.pk]
        try:
            async with self.db.as_role(channel.claims) as conn:
                return await conn.fetchval(table.rls_sql, *args) is not None
        except (asyncpg.PostgresError, PermissionError) as exc:
            logger.bind(event="devstack.realtime.rls_check_failed", error=type(exc).__name__).debug(str(exc))
            return False

    # -- publication and tables ------------------------------------------------------------

    async def sync_publication(self) -> dict[TableKey, int]:
        """The published tables (schema, table) → oid; adds the trigger where it is missing."""
        async with self._publication_lock, self.db.admin() as conn:
            rows = await conn.fetch(QUERIES["published_tables"], PUBLICATION, TRIGGER)
            for row in rows:
                if not row["has_trigger"]:
                    await self._install_trigger(conn, row["schema"], row["table"])
        return {(r["schema"], r["table"]): r["oid"] for r in rows}

    async def _install_trigger(self, conn: Any, schema: str, table: str) -> None:
        async with conn.transaction():
            await conn.execute("select pg_advisory_xact_lock(hashtext('_devstack_realtime'))")
            exists = await conn.fetchval(
                "select 1 from pg_trigger where tgrelid = $1::regclass and tgname = $2",
                f"{_ident(schema)}.{_ident(table)}", TRIGGER)
            if not exists:
                await conn.execute(
                    f"create trigger {TRIGGER} after insert or update or delete"
                    f" on {_ident(schema)}.{_ident(table)}"
                    " for each row execute function _devstack.realtime_notify()")
        logger.bind(event="devstack.realtime.trigger_installed", table=f"{schema}.{table}").info(
            "change trigger installed")

    async def _load_table(self, key: TableKey, oid: int) -> Table:
        async with self.db.admin() as conn:
            rows = await conn.fetch(QUERIES["table_columns"], oid)
        table = Table(
            schema=key[0], name=key[1], oid=oid,
            columns=tuple({"name": r["name"], "type": r["type"]} for r in rows),
            sql_types={r["name"]: r["sql_type"] for r in rows},
            pk=tuple(r["name"] for r in rows if r["is_pk"]),
            rls=bool(rows and rows[0]["rls"]),
            replica_identity=rows[0]["replident"] if rows else "d")
        self._tables[key] = table
        return table

    # -- subscriptions ---------------------------------------------------------------------

    async def _subscribe(self, channel: Channel, bindings: list[dict[str, Any]]) -> tuple[Binding, ...]:
        specs = [(binding_id(params), parse_binding(params)) for params in bindings]
        published = await self.sync_publication()
        return tuple([await self._resolve(bid, spec, channel, published) for bid, spec in specs])

    async def _resolve(self, bid: int, spec: BindingSpec, channel: Channel,
                       published: dict[TableKey, int]) -> Binding:
        keys = [k for k in published if spec.schema in ("*", k[0]) and spec.table in ("*", k[1])]
        if not keys:
            raise SubscriptionError(
                "Unable to subscribe to changes with given parameters. Please check Realtime is enabled "
                f"for the given connect parameters: [{spec.log()}]")
        targets: dict[TableKey, Target] = {}
        for key in keys:
            table = await self._load_table(key, published[key])
            target = await self._target(spec, table, channel.role)
            if target is not None:
                targets[key] = target
        await self._register_interest(list(targets), spec.event)
        return Binding(bid, spec.event, targets)

    async def _register_interest(self, keys: list[TableKey], event: str) -> None:
        """Make the trigger notify these tables' ``event`` changes (before "Subscribed")."""
        new = [key for key in keys if not self._interest.get(key, set()) & {event, "*"}]
        if not new:
            return
        async with self.db.admin() as conn:
            await conn.executemany(QUERIES["register_interest"],
                                   [(schema, table, event) for schema, table in new])
        for key in new:
            self._interest.setdefault(key, set()).add(event)

    async def _target(self, spec: BindingSpec, table: Table, role: str) -> Target | None:
        """How the binding applies to ``table``; None when the role cannot read its primary key."""
        async with self.db.admin() as conn:
            rows = await conn.fetch(QUERIES["hidden_columns"], table.oid, role)
            hidden = frozenset(r["attname"] for r in rows)
            filters = tuple([await _cast_filter(conn, f, spec, table, hidden) for f in spec.filters])
        if not table.pk or hidden.intersection(table.pk):
            return None
        if spec.select is not None:
            hidden |= table.column_names - set(spec.select) - set(table.pk)
        return Target(filters, hidden)

    # -- websocket -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.faults.realtime_refuse_connections:
            return await self._refuse_connect(503, "Service Unavailable")
        token = request.headers.get("x-api-key") or request.query.get("apikey")
        claims = check_token(self.keys, token) if token else Refusal("API key is missing", "", "")
        vsn = request.query.get("vsn", "1.0.0")
        if isinstance(claims, Refusal):
            return await self._refuse_connect(401, claims.http)
        if vsn not in VSNS:
            return await self._refuse_connect(400, f"Unsupported vsn {vsn}")
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, compress=False)
        await ws.prepare(request)
        sock = Socket(ws, request.transport, vsn == "2.0.0", claims)
        self._sockets.add(sock)
        self.connections += 1
        logger.bind(event="devstack.realtime.socket_opened", vsn=vsn, role=claims.get("role")).debug(
            "socket opened")
        try:
            await self._serve(sock)
        finally:
            self._sockets.discard(sock)
        return ws

    async def _refuse_connect(self, status: int, message: str) -> web.Response:
        logger.bind(event="devstack.realtime.socket_refused", status=status).info(message)
        if self.connect_error_delay:
            await asyncio.sleep(self.connect_error_delay)
        return web.json_response({"error": message}, status=status)

    async def _serve(self, sock: Socket) -> None:
        async for message in sock.ws:
            if message.type != WSMsgType.TEXT:
                continue
            frame = _decode(message.data, sock.v2)
            if frame is None:
                logger.bind(event="devstack.realtime.bad_frame").warning("unreadable client frame ignored")
                continue
            await self._on_frame(sock, frame)

    async def _on_frame(self, sock: Socket, frame: Frame) -> None:
        if frame.topic == "phoenix" and frame.event == "heartbeat":
            await self._reply(sock, frame, "ok", {})
        elif frame.event == "phx_join":
            await self._join(sock, frame)
        elif (channel := sock.channels.get(frame.topic)) is None:
            await self._reply(sock, frame, "error", {"reason": "unmatched topic"})
        elif frame.event == "phx_leave":
            await self._leave(sock, channel, frame)
        elif frame.event == "access_token":
            await self._access_token(sock, channel, frame.payload)

    async def _reply(self, sock: Socket, frame: Frame, status: str, response: dict[str, Any]) -> None:
        await sock.send(sock.encode(frame.join_ref, frame.ref, frame.topic, "phx_reply",
                                    {"status": status, "response": response}))

    async def _system(self, sock: Socket, channel: Channel, extension: str, status: str,
                      message: str) -> None:
        await sock.send(sock.encode(channel.join_ref, None, channel.topic, "system",
                                    {"channel": channel.name, "extension": extension,
                                     "status": status, "message": message}))

    async def _join(self, sock: Socket, frame: Frame) -> None:
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        claims, reason = self._join_claims(sock, frame.topic, payload)
        params = _binding_params(payload)
        channel = Channel(frame.topic, frame.join_ref or frame.ref, claims or {}, params,
                          private=is_private(payload.get("config")))
        replay: Replay | None = None
        if claims is not None:
            try:
                replay = await self._authorise(channel, payload.get("config"))
            except JoinRefused as refused:
                claims, reason = None, str(refused)
        if claims is None:
            await self._refuse_join(sock, frame, reason)
            return
        sock.channels[frame.topic] = channel  # a second join of a topic replaces the first
        echoed = [{**p, "id": binding_id(p)} for p in params]
        await self._reply(sock, frame, "ok", {"postgres_changes": echoed})
        logger.bind(event="devstack.realtime.join", topic=frame.topic, role=channel.role,
                    bindings=len(params), private=channel.private).debug("channel joined")
        if replay is not None:
            await self._replay(sock, channel, replay)
        if params:
            await self._start_changes(sock, channel, params)

    async def _refuse_join(self, sock: Socket, frame: Frame, reason: str) -> None:
        logger.bind(event="devstack.realtime.join_refused", topic=frame.topic).info(reason)
        if self.join_error_delay:
            await asyncio.sleep(self.join_error_delay)
        await self._reply(sock, frame, "error", {"reason": reason})

    async def _authorise(self, channel: Channel, config: Any) -> Replay | None:
        """The replay a private join asks for; JoinRefused when RLS or the params refuse it."""
        replay = replay_of(config, channel.private)
        if channel.private and not await self._may_read_topic(channel):
            raise unauthorized(channel.name)
        return replay

    async def _may_read_topic(self, channel: Channel) -> bool:
        """The server's read check: RLS on realtime.messages lets the role read a probe row."""
        probe, role = uuid.uuid4(), channel.role
        try:
            async with self.db.admin() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    await conn.execute(QUERIES["broadcast_probe"], probe, channel.name)
                    await conn.fetchval(QUERIES["as_channel_role"], role, channel.name,
                                        JSON(channel.claims), str(channel.claims.get("sub") or ""))
                    return bool(await conn.fetchval(QUERIES["probe_visible"], probe))
                finally:
                    await transaction.rollback()
        except asyncpg.PostgresError as exc:  # e.g. an RLS policy that raises: refused, as on Supabase
            logger.bind(event="devstack.realtime.rls_policy_error").info(str(exc))
            return False

    async def _replay(self, sock: Socket, channel: Channel, replay: Replay) -> None:
        async with self.db.admin() as conn:
            rows = await conn.fetch(QUERIES["replay"], channel.name, replay.since_ms, replay.limit)
        for row in rows:
            message = Message(row["id"], channel.name, row["event"], True, row["payload"])
            channel.replayed.add(message.id)
            if await sock.send(sock.broadcast_frame(channel, message.frame_payload(replayed=True))):
                self.events_sent += 1

    def _join_claims(self, sock: Socket, topic: str, payload: dict[str, Any]
                     ) -> tuple[dict[str, Any] | None, str]:
        if not topic.startswith("realtime:"):
            return None, "unmatched topic"
        if topic == "realtime:":
            return None, "TopicNameRequired: You must provide a topic name"
        if self.faults.realtime_refuse_joins:
            return None, REFUSED_JOIN
        token = payload.get("access_token") or payload.get("user_token")
        if not isinstance(token, str) or token.startswith("sb_"):
            return sock.claims, ""
        claims = check_token(self.keys, token)
        if isinstance(claims, Refusal):
            return None, claims.reason
        return claims, ""

    async def _start_changes(self, sock: Socket, channel: Channel, params: list[dict[str, Any]]) -> None:
        try:
            bindings = await self._subscribe(channel, params)
        except (SubscriptionError, asyncpg.PostgresError, OSError) as exc:
            logger.bind(event="devstack.realtime.subscribe_failed", topic=channel.topic).info(str(exc))
            channel.bindings = ()
            if sock.channels.get(channel.topic) is channel:
                await self._system(sock, channel, "postgres_changes", "error", _system_text(exc))
            return
        if sock.channels.get(channel.topic) is not channel:
            return
        channel.bindings = bindings
        await self._system(sock, channel, "postgres_changes", "ok", SUBSCRIBED)
        self.subscribed += 1

    async def _leave(self, sock: Socket, channel: Channel, frame: Frame) -> None:
        await self._reply(sock, frame, "ok", {})
        await self._close_channel(sock, channel)

    async def _close_channel(self, sock: Socket, channel: Channel) -> None:
        if sock.channels.get(channel.topic) is channel:
            del sock.channels[channel.topic]
        await sock.send(sock.encode(channel.join_ref, channel.join_ref, channel.topic, "phx_close", {}))

    async def _shutdown_channel(self, sock: Socket, channel: Channel, message: str | None) -> None:
        if message is not None:
            await self._system(sock, channel, "system", "error", message)
        await self._close_channel(sock, channel)

    async def _access_token(self, sock: Socket, channel: Channel, payload: Any) -> None:
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or token.startswith("sb_"):
            return
        claims = check_token(self.keys, token)
        if isinstance(claims, Refusal):
            await self._shutdown_channel(sock, channel, claims.message)
            return
        channel.claims = claims
        if channel.params:  # the server subscribes the bindings again under the new claims
            await self._start_changes(sock, channel, channel.params)

    async def _close_socket(self, sock: Socket) -> None:
        sock.channels.clear()
        try:
            await asyncio.wait_for(sock.ws.close(code=WSCloseCode.GOING_AWAY), timeout=2)
        except (TimeoutError, ConnectionError, RuntimeError):
            if sock.transport is not None:
                sock.transport.abort()


# ---------------------------------------------------------------------------------------------
# Helpers


def _decode(text: str, v2: bool) -> Frame | None:
    try:
        data = json.loads(text)
        if v2:
            join_ref, ref, topic, event, payload = data
        else:
            join_ref, ref = data.get("join_ref"), data.get("ref")
            topic, event, payload = data["topic"], data["event"], data.get("payload")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not isinstance(topic, str) or not isinstance(event, str):
        return None
    return Frame(_ref(join_ref), _ref(ref), topic, event, payload)


def _ref(value: Any) -> str | None:
    return None if value is None else str(value)


def _binding_params(payload: dict[str, Any]) -> list[dict[str, Any]]:
    config = payload.get("config")
    changes = config.get("postgres_changes") if isinstance(config, dict) else None
    if not isinstance(changes, list):
        return []
    return [c for c in changes if isinstance(c, dict)]


@dataclass(frozen=True)
class Refusal:
    """Why a token is refused, worded as the server words it at each place it refuses one."""

    http: str  # the connect's 401 body
    reason: str  # a phx_join refusal
    message: str  # the system error before phx_close (an access_token push)


def check_token(keys: Keys, token: str) -> dict[str, Any] | Refusal:
    """The token's claims, or why it is refused."""
    try:
        return keys.verify(token)
    except InvalidKey as exc:
        return _refusal(str(exc), token)


def _refusal(problem: str, token: str) -> Refusal:
    if "expired" in problem:
        message = f"Token has expired {_seconds_expired(token)} seconds ago"
        return Refusal("Token has expired", f"InvalidJWTToken: {message}", message)
    if "Signature verification failed" in problem:
        message = "Failed to validate JWT signature"
        return Refusal(message, f"JwtSignatureError: {message}", message)
    if "role" in problem or '"exp"' in problem:
        message = "Fields `role` and `exp` are required in JWT"
        return Refusal(message, f"InvalidJWTToken: {message}", message)
    message = "The token provided is not a valid JWT"
    return Refusal(message, f"MalformedJWT: {message}", message)


def _seconds_expired(token: str) -> int:
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return 0
    return max(0, int(time.time()) - int(exp)) if isinstance(exp, int | float) else 0


async def _cast_filter(conn: Any, f: Filter, spec: BindingSpec, table: Table,
                       hidden: frozenset[str]) -> Filter:
    """The filter with its value cast by Postgres to the column's type, as JSON."""
    def failure(reason: str) -> SubscriptionError:
        return SubscriptionError(
            "Unable to subscribe to changes with given parameters. An exception happened so please check "
            f"your connect parameters: [{spec.log()}]. Exception: {reason}")

    if f.column not in table.sql_types or f.column in hidden:
        raise failure(f"ERROR P0001 (raise_exception) invalid column for filter {f.column}")
    if f.op == "is":
        if f.raw not in IS_VALUES:
            raise failure("ERROR P0001 (raise_exception) invalid value for is filter: "
                          "must be null, true, false, or unknown")
        return f
    sql_type = table.sql_types[f.column] + ("[]" if f.op == "in" else "")
    try:
        value = await conn.fetchval("select _devstack.cast_filter($1, $2)", f.raw, sql_type)
    except asyncpg.PostgresError as exc:
        raise failure(_postgrex_message(exc)) from None
    return Filter(f.column, f.op, f.raw, f.negate, value)


def _system_text(exc: Exception) -> str:
    """A subscription failure as the server words it (its own text, else the error inspected)."""
    if isinstance(exc, SubscriptionError):
        return str(exc)
    if isinstance(exc, asyncpg.PostgresError):
        return _postgrex_message(exc)
    return f"%{type(exc).__name__}{{message: {json.dumps(str(exc))}}}"


def _postgrex_message(exc: asyncpg.PostgresError) -> str:
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__.removesuffix("Error")).lower()
    return f"ERROR {exc.sqlstate} ({name}) {exc.args[0] if exc.args else exc}"


async def _wait_until(due: float) -> None:
    wait = due - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.bind(event="devstack.realtime.task_crashed", task=task.get_name()).opt(
            exception=task.exception()).error("realtime background task crashed")
