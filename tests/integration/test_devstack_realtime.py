"""The devstack's Realtime server speaks the real wire protocol to the unmodified clients.

Each test starts a minimal aiohttp app with only the Realtime routes over a fresh database, then
talks to it with realtime-py, supabase-py or a raw aiohttp websocket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from realtime import AsyncRealtimeClient
from supabase import acreate_client

from realtime_worker import migrate
from realtime_worker_devstack.db import Database
from realtime_worker_devstack.faults import Faults
from realtime_worker_devstack.keys import Keys
from realtime_worker_devstack.realtime import Filter, RealtimeServer, parse_filter, passes
from tests import conftest
from tests.helpers import insert_job, make_user

pytestmark = [
    pytest.mark.integration,
    # realtime-py reads ConnectionClosed.code/.reason when a socket drops; websockets 15 deprecates
    # them, and with warnings as errors the client's listen task would die instead of reconnecting.
    pytest.mark.filterwarnings("ignore:ConnectionClosed.code is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:ConnectionClosed.reason is deprecated:DeprecationWarning"),
]

SUBSCRIBED = "Subscribed to PostgreSQL"
WAIT = 5.0
COMMIT_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PG_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+00:00$")


@dataclass
class Stack:
    realtime: RealtimeServer
    keys: Keys
    faults: Faults
    url: str
    conn: asyncpg.Connection


@pytest.fixture
async def stack(db: conftest.Database, tmp_path: Path) -> AsyncIterator[Stack]:
    database = Database(db.dsn)
    await database.open()
    keys, faults = Keys.for_folder(tmp_path / "keys"), Faults(seed=7)
    server = RealtimeServer(database, keys, faults)
    await server.start()
    app = web.Application()
    app.add_routes(server.routes())
    http = TestServer(app, host="127.0.0.1", port=0)
    await http.start_server()
    conn = await asyncpg.connect(db.dsn)
    try:
        yield Stack(server, keys, faults, str(http.make_url("")).rstrip("/"), conn)
    finally:
        await conn.close()
        await server.stop()
        await http.close()
        await database.close()


@pytest.fixture(autouse=True)
def no_unrecognized_frames(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """realtime-py logs (and drops) every frame it cannot validate; ours must never be one."""
    caplog.set_level(logging.ERROR, logger="realtime")
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    bad = [r.getMessage()[:300] for r in records if "Unrecognized message format" in r.getMessage()]
    assert not bad


class Inbox:
    """Collects what a callback receives; ``next`` waits for the next item without sleeping."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def __call__(self, item: Any, *more: Any) -> None:
        value = (item, *more) if more else item
        self.items.append(value)
        self._queue.put_nowait(value)

    async def next(self) -> Any:
        with anyio.fail_after(WAIT):
            return await self._queue.get()

    async def state(self, wanted: str) -> Exception | None:
        """Wait for subscribe state ``wanted`` (rejoins take up to 10 s); its error."""
        with anyio.fail_after(15):
            while True:
                state, error = await self._queue.get()
                if state == wanted:
                    return error  # type: ignore[no-any-return]


@dataclass
class Sub:
    channel: Any
    states: Inbox
    system: Inbox
    changes: list[Inbox]

    def ids(self) -> list[int]:
        return [c.id for c in self.channel.postgres_changes_callbacks]


async def listen(client: Any, topic: str, *bindings: tuple[str, str, str | None],
                 wait: bool = True) -> Sub:
    """Subscribe ``(event, table, filter)`` bindings; wait for "Subscribed to PostgreSQL"."""
    channel = client.channel(topic)
    sub = Sub(channel, Inbox(), Inbox(), [Inbox() for _ in bindings])
    for (event, table, filter_), inbox in zip(bindings, sub.changes, strict=True):
        channel.on_postgres_changes(event, callback=inbox, table=table, schema="public", filter=filter_)
    channel.on_system(sub.system)
    await channel.subscribe(sub.states)
    if wait:
        assert (await sub.system.next()).message == SUBSCRIBED
    return sub


@asynccontextmanager
async def realtime_client(stack: Stack, token: str | None = None) -> AsyncIterator[AsyncRealtimeClient]:
    client = AsyncRealtimeClient(f"{stack.url}/realtime/v1", token or stack.keys.service_role)
    try:
        yield client
    finally:
        await client.close()


# --- the INSERT event, as the real server sends it ---------------------------------------------


async def test_insert_reaches_supabase_client_with_real_value_encodings(stack: Stack) -> None:
    user = await make_user(stack.conn)
    client = await acreate_client(stack.url, stack.keys.service_role)
    try:
        sub = await listen(client, "jobs-worker", ("INSERT", "jobs", None))
        job_id = await insert_job(stack.conn, user, {"text_prompt": "a fox", "tags": ["a", "b"]})
        payload = await sub.changes[0].next()
    finally:
        await client.remove_all_channels()
    row = await stack.conn.fetchrow("select * from public.jobs where id = $1", job_id)
    assert row is not None
    assert payload["ids"] == sub.ids()
    data = payload["data"]
    assert (data["schema"], data["table"], data["type"], data["errors"]) == ("public", "jobs", "INSERT", None)
    assert COMMIT_TS.match(data["commit_timestamp"])
    assert "old_record" not in data
    types = {c["name"]: c["type"] for c in data["columns"]}
    assert types["id"] == "uuid" and types["status"] == "job_status" and types["params_json"] == "jsonb"
    assert types["created_at"] == "timestamptz" and types["attempts"] == "int4"
    assert list(types) == list(row.keys())
    record = data["record"]
    assert record["id"] == str(job_id) and record["user_id"] == str(user)
    assert record["status"] == "queued"
    assert record["params_json"] == {"text_prompt": "a fox", "tags": ["a", "b"]}
    assert record["attempts"] == 0 and record["cost_cents"] is None and record["locked_by"] is None
    assert PG_TS.match(record["created_at"])
    assert datetime.fromisoformat(record["created_at"]) == row["created_at"]
    assert stack.realtime.subscribed == 1 and stack.realtime.events_sent == 1


async def test_update_and_delete_frames_carry_the_replica_identity(stack: Stack) -> None:
    user = await make_user(stack.conn)
    job_id = await insert_job(stack.conn, user)
    async with realtime_client(stack) as client:
        sub = await listen(client, "changes", ("UPDATE", "jobs", None), ("DELETE", "jobs", None))
        await stack.conn.execute("update public.jobs set status = 'running' where id = $1", job_id)
        update = await sub.changes[0].next()
        await stack.conn.execute("delete from public.jobs where id = $1", job_id)
        delete = await sub.changes[1].next()
    assert update["ids"] == [sub.ids()[0]]
    assert update["data"]["type"] == "UPDATE"
    assert update["data"]["record"]["status"] == "running"
    assert update["data"]["old_record"] == {"id": str(job_id)}  # REPLICA IDENTITY DEFAULT: the key
    assert delete["ids"] == [sub.ids()[1]]
    assert delete["data"]["type"] == "DELETE"
    assert delete["data"]["old_record"] == {"id": str(job_id)}
    assert "record" not in delete["data"]
    assert sub.changes[0].items == [update]


async def test_wildcard_event_binding_gets_every_kind(stack: Stack) -> None:
    user = await make_user(stack.conn)
    async with realtime_client(stack) as client:
        sub = await listen(client, "all", ("*", "jobs", None))
        job_id = await insert_job(stack.conn, user)
        await stack.conn.execute("update public.jobs set error = 'x' where id = $1", job_id)
        await stack.conn.execute("delete from public.jobs where id = $1", job_id)
        kinds = [(await sub.changes[0].next())["data"]["type"] for _ in range(3)]
    assert kinds == ["INSERT", "UPDATE", "DELETE"]


# --- filters -------------------------------------------------------------------------------------


async def test_filters_select_updates_by_the_new_row(stack: Stack) -> None:
    user = await make_user(stack.conn)
    job_a = await insert_job(stack.conn, user)
    job_b = await insert_job(stack.conn, user)
    async with realtime_client(stack) as client:
        sub = await listen(client, "filters",
                           ("UPDATE", "jobs", "status=eq.queued"),
                           ("UPDATE", "jobs", "status=in.(running,failed)"),
                           ("UPDATE", "jobs", "attempts=gte.1"))
        await stack.conn.execute(
            "update public.jobs set status = 'running', attempts = 1 where id = $1", job_a)
        await stack.conn.execute("update public.jobs set error = 'still queued' where id = $1", job_b)
        queued = await sub.changes[0].next()
        running = await sub.changes[1].next()
        counted = await sub.changes[2].next()
    # B's frame reached the eq.queued binding after A's was sent: A's was never meant for it.
    assert queued["data"]["record"]["id"] == str(job_b)
    assert [p["data"]["record"]["id"] for p in sub.changes[0].items] == [str(job_b)]
    assert running["data"]["record"]["id"] == counted["data"]["record"]["id"] == str(job_a)
    assert running["ids"] == sub.ids()[1:]  # one frame for both matching bindings
    assert [p["data"]["record"]["id"] for p in sub.changes[1].items] == [str(job_a)]


def test_filter_parsing_and_matching() -> None:
    assert parse_filter("status=eq.queued") == (Filter("status", "eq", "queued"),)
    assert parse_filter("status=not.in.(a,b),id=gt.3") == (
        Filter("status", "in", "{a,b}", True), Filter("id", "gt", "3"))
    assert parse_filter(" ") == ()
    number = Filter("attempts", "gt", "2", value=2)
    assert passes([number], {"attempts": 3}) and not passes([number], {"attempts": 2})
    assert not passes([number], {"attempts": None}) and not passes([number], {})
    assert passes([Filter("x", "is", "null")], {"x": None})
    assert passes([Filter("s", "in", "{a,b}", value=["a", "b"])], {"s": "b"})
    assert not passes([Filter("s", "in", "{a,b}", True, value=["a", "b"])], {"s": "b"})


async def test_bad_filter_gets_the_parse_error(stack: Stack) -> None:
    async with realtime_client(stack) as client:
        sub = await listen(client, "bad", ("UPDATE", "jobs", "status=foo.bar"), wait=False)
        error = await sub.states.state("CHANNEL_ERROR")
    assert json.loads(str(error)) == {
        "channel": "bad", "extension": "postgres_changes", "status": "error",
        "message": 'Error parsing `filter` params: ["foo", "bar"]'}


async def test_filter_value_the_column_type_refuses(stack: Stack) -> None:
    async with realtime_client(stack) as client:
        sub = await listen(client, "badvalue", ("UPDATE", "jobs", "status=eq.nope"), wait=False)
        error = await sub.states.state("CHANNEL_ERROR")
    message = json.loads(str(error))["message"]
    assert message.startswith("Unable to subscribe to changes with given parameters. An exception happened")
    assert "invalid input value for enum job_status" in message


async def test_table_outside_publication_gets_the_system_error(stack: Stack) -> None:
    async with realtime_client(stack) as client:
        sub = await listen(client, "assets", ("INSERT", "assets", None), wait=False)
        assert await sub.states.state("SUBSCRIBED") is None
        error = await sub.states.state("CHANNEL_ERROR")
    assert json.loads(str(error)) == {
        "channel": "assets", "extension": "postgres_changes", "status": "error",
        "message": "Unable to subscribe to changes with given parameters. Please check Realtime is "
                   "enabled for the given connect parameters: [event: INSERT, schema: public, "
                   "table: assets, filters: [], select: nil]"}
    assert stack.realtime.subscribed == 0


async def test_table_published_after_start_gets_a_trigger_on_join(stack: Stack) -> None:
    await stack.conn.execute("create table public.notes (id bigint primary key, body text)")
    await stack.conn.execute("alter publication supabase_realtime add table public.notes")
    await stack.conn.execute("alter table public.notes replica identity full")
    async with realtime_client(stack) as client:
        sub = await listen(client, "notes", ("INSERT", "notes", "id=lt.10"), ("UPDATE", "notes", None))
        await stack.conn.execute("insert into public.notes values (12, 'no'), (3, 'yes')")
        payload = await sub.changes[0].next()
        await stack.conn.execute("update public.notes set body = 'changed' where id = 3")
        update = await sub.changes[1].next()
    assert payload["data"]["record"] == {"id": 3, "body": "yes"}
    assert payload["data"]["columns"] == [{"name": "id", "type": "int8"}, {"name": "body", "type": "text"}]
    assert update["data"]["old_record"] == {"id": 3, "body": "yes"}  # REPLICA IDENTITY FULL: the old row


# --- authorization -------------------------------------------------------------------------------


async def test_authenticated_subscriber_only_gets_rows_it_may_read(stack: Stack) -> None:
    mine, theirs = await make_user(stack.conn), await make_user(stack.conn)
    token = stack.keys.user_token(mine, issuer=f"{stack.url}/auth/v1")
    async with realtime_client(stack, token) as client:
        sub = await listen(client, "my-jobs", ("INSERT", "jobs", None))
        await insert_job(stack.conn, theirs)
        my_job = await insert_job(stack.conn, mine)
        payload = await sub.changes[0].next()
    assert payload["data"]["record"]["id"] == str(my_job)  # theirs, committed first, never came
    assert len(sub.changes[0].items) == 1


async def test_missing_or_bad_key_is_refused_with_401(stack: Stack) -> None:
    other = Keys("another-secret-0123456789-0123456789").service_role
    async with aiohttp.ClientSession() as session:
        answers = []
        for query in ("", "?apikey=not-a-jwt", f"?apikey={other}"):
            async with session.get(f"{stack.url}/realtime/v1/websocket{query}") as response:
                answers.append((response.status, await response.json()))
    assert answers == [(401, {"error": "API key is missing"}),
                       (401, {"error": "The token provided is not a valid JWT"}),
                       (401, {"error": "Failed to validate JWT signature"})]
    assert stack.realtime.connections == 0


async def test_refused_join_then_recovery(stack: Stack) -> None:
    stack.faults.realtime_refuse_joins = True
    async with realtime_client(stack) as client:
        sub = await listen(client, "refused", ("INSERT", "jobs", None), wait=False)
        error = await sub.states.state("CHANNEL_ERROR")
        stack.faults.realtime_refuse_joins = False
        await sub.states.state("SUBSCRIBED")  # realtime-py rejoins after 1 s
        assert (await sub.system.next()).message == SUBSCRIBED
    assert json.loads(str(error)) == {"reason": "UnableToConnectToProject: Realtime was unable to "
                                                "connect to the project database"}


async def test_access_token_push_resubscribes_and_a_bad_one_closes(stack: Stack) -> None:
    async with realtime_client(stack) as client:
        sub = await listen(client, "tokens", ("INSERT", "jobs", None))
        await client.set_auth(stack.keys.make("service_role", ttl=600))
        assert (await sub.system.next()).message == SUBSCRIBED
        await client.set_auth(stack.keys.make("service_role", ttl=-30))
        error = await sub.states.state("CHANNEL_ERROR")
        await sub.states.state("CLOSED")
    message = json.loads(str(error))
    assert message["extension"] == "system"
    assert re.fullmatch(r"Token has expired \d+ seconds ago", message["message"])


# --- faults --------------------------------------------------------------------------------------


async def test_cut_socket_is_reconnected_and_events_flow_again(stack: Stack) -> None:
    user = await make_user(stack.conn)
    async with realtime_client(stack) as client:
        sub = await listen(client, "cut", ("INSERT", "jobs", None))
        await stack.realtime.cut_sockets()
        await sub.states.state("CHANNEL_ERROR")
        await sub.states.state("SUBSCRIBED")
        assert (await sub.system.next()).message == SUBSCRIBED
        job_id = await insert_job(stack.conn, user)
        payload = await sub.changes[0].next()
    assert payload["data"]["record"]["id"] == str(job_id)
    assert stack.realtime.connections == 2 and stack.realtime.subscribed == 2


async def test_server_phx_close_is_reported_closed(stack: Stack) -> None:
    async with realtime_client(stack) as client:
        sub = await listen(client, "closing", ("INSERT", "jobs", None))
        await stack.realtime.close_channels()
        await sub.states.state("CLOSED")
        assert client.channels == {}


async def test_close_with_a_reason_sends_the_system_error_first(stack: Stack) -> None:
    async with realtime_client(stack) as client:
        sub = await listen(client, "limited", ("INSERT", "jobs", None))
        await stack.realtime.close_channels("Too many messages per second")
        error = await sub.states.state("CHANNEL_ERROR")
        await sub.states.state("CLOSED")
    assert json.loads(str(error))["message"] == "Too many messages per second"


async def test_drop_fraction_one_drops_everything_and_zero_delivers_all(stack: Stack) -> None:
    user = await make_user(stack.conn)
    async with realtime_client(stack) as client:
        sub = await listen(client, "drops", ("INSERT", "jobs", None))
        stack.faults.realtime_drop_fraction = 1.0
        await insert_job(stack.conn, user)
        await stack.realtime.sync()
        assert stack.realtime.events_dropped == 1
        stack.faults.realtime_drop_fraction = 0.0
        kept = [await insert_job(stack.conn, user) for _ in range(3)]
        received = [(await sub.changes[0].next())["data"]["record"]["id"] for _ in kept]
    assert received == [str(k) for k in kept]
    assert stack.realtime.events_sent == 3


async def test_delay_holds_delivery_back(stack: Stack) -> None:
    user = await make_user(stack.conn)
    stack.faults.realtime_delay_seconds = 0.3
    async with realtime_client(stack) as client:
        sub = await listen(client, "slow", ("INSERT", "jobs", None))
        started = time.monotonic()
        await insert_job(stack.conn, user)
        await sub.changes[0].next()
    assert time.monotonic() - started >= 0.3


# --- payload size --------------------------------------------------------------------------------


async def test_rows_over_the_notify_limit_arrive_whole(stack: Stack) -> None:
    user = await make_user(stack.conn)
    params = {"text_prompt": "x" * 20_000}
    async with realtime_client(stack) as client:
        sub = await listen(client, "big", ("INSERT", "jobs", None))
        await insert_job(stack.conn, user, params)
        payload = await sub.changes[0].next()
    assert payload["data"]["record"]["params_json"] == params
    assert payload["data"]["errors"] is None


async def test_rows_over_max_record_bytes_keep_only_small_values(stack: Stack) -> None:
    user = await make_user(stack.conn)
    async with realtime_client(stack) as client:
        sub = await listen(client, "huge", ("INSERT", "jobs", None))
        job_id = await insert_job(stack.conn, user, {"text_prompt": "x" * 1_100_000})
        payload = await sub.changes[0].next()
    data = payload["data"]
    assert data["errors"] == ["Error 413: Payload Too Large"]
    assert data["record"]["id"] == str(job_id) and "params_json" not in data["record"]


# --- raw frames ----------------------------------------------------------------------------------


async def test_array_framing_vsn_2(stack: Stack) -> None:
    user = await make_user(stack.conn)
    binding = {"event": "INSERT", "schema": "public", "table": "jobs"}
    join = ["1", "1", "realtime:raw", "phx_join",
            {"config": {"postgres_changes": [binding]}, "access_token": stack.keys.service_role}]
    url = f"{stack.url}/socket/websocket?apikey={stack.keys.service_role}&vsn=2.0.0"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        with anyio.fail_after(5):
            await ws.send_json(join)
            reply = await ws.receive_json()
            system = await ws.receive_json()
            await ws.send_json([None, "2", "phoenix", "heartbeat", {}])
            heartbeat = await ws.receive_json()
            job_id = await insert_job(stack.conn, user)
            change = await ws.receive_json()
            await ws.send_json(["1", "3", "realtime:raw", "phx_leave", {}])
            left, closed = await ws.receive_json(), await ws.receive_json()
    binding_id = reply[4]["response"]["postgres_changes"][0]["id"]
    assert reply == ["1", "1", "realtime:raw", "phx_reply",
                     {"status": "ok", "response": {"postgres_changes": [{**binding, "id": binding_id}]}}]
    assert isinstance(binding_id, int) and binding_id != 0
    assert system == ["1", None, "realtime:raw", "system", {
        "channel": "raw", "extension": "postgres_changes", "status": "ok", "message": SUBSCRIBED}]
    assert heartbeat == [None, "2", "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    assert change[:4] == [None, None, "realtime:raw", "postgres_changes"]
    assert change[4]["ids"] == [binding_id] and change[4]["data"]["record"]["id"] == str(job_id)
    assert left == ["1", "3", "realtime:raw", "phx_reply", {"status": "ok", "response": {}}]
    assert closed == ["1", "1", "realtime:raw", "phx_close", {}]


async def test_object_framing_heartbeat_and_topic_rules(stack: Stack) -> None:
    url = f"{stack.url}/realtime/v1/websocket?apikey={stack.keys.anon}"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        with anyio.fail_after(5):
            await ws.send_json({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "7"})
            heartbeat = await ws.receive_json()
            await ws.send_json({"topic": "realtime:", "event": "phx_join", "payload": {}, "ref": "8",
                                "join_ref": "8"})
            nameless = await ws.receive_json()
            await ws.send_json({"topic": "realtime:x", "event": "broadcast", "payload": {}, "ref": "9"})
            unjoined = await ws.receive_json()
            await ws.send_json({"topic": "realtime:x", "event": "phx_join", "payload": {}, "ref": "10"})
            plain = await ws.receive_json()
    assert heartbeat == {"topic": "phoenix", "event": "phx_reply", "ref": "7",
                         "payload": {"status": "ok", "response": {}}}
    assert nameless["payload"] == {"status": "error",
                                   "response": {"reason": "TopicNameRequired: You must provide a topic name"}}
    assert unjoined["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}
    assert plain == {"topic": "realtime:x", "event": "phx_reply", "ref": "10",
                     "payload": {"status": "ok", "response": {"postgres_changes": []}}}


async def test_stop_closes_sockets(stack: Stack) -> None:
    async with realtime_client(stack) as client:
        sub = await listen(client, "stopping", ("INSERT", "jobs", None))
        assert stack.realtime.joined_channels == 1
        client.auto_reconnect = False
        await stack.realtime.stop()
        await sub.states.state("CHANNEL_ERROR")
    assert stack.realtime.stats()["open_sockets"] == 0



# --- Broadcast from Database (private channels, RLS, replay) --------------------------------------

TOPIC = "worker:jobs"


async def broadcast_contract(conn: asyncpg.Connection) -> None:
    """The worker's migration with the Broadcast wake-up: the trigger on jobs and the policies."""
    await migrate.apply(conn, wakeup="broadcast")


async def insert_job_as_user(conn: asyncpg.Connection, user: Any) -> Any:
    """A job inserted as the app inserts it: as ``authenticated``, under the user's claims."""
    async with conn.transaction():
        await conn.execute("select set_config('role', 'authenticated', true),"
                           " set_config('request.jwt.claims', $1, true)",
                           json.dumps({"sub": str(user), "role": "authenticated"}))
        return await conn.fetchval("insert into public.jobs (user_id, params_json)"
                                   " values ($1, '{\"text_prompt\": \"a cat\"}') returning id", user)


async def join_private(client: Any, topic: str, replay: dict[str, int] | None = None,
                       wait: bool = True) -> tuple[Any, Inbox, Inbox]:
    broadcast: dict[str, Any] = {"ack": False, "self": False}
    if replay is not None:
        broadcast["replay"] = replay
    channel = client.channel(topic, {"config": {"broadcast": broadcast, "private": True,
                                                "presence": {"key": "", "enabled": False}}})
    messages, states = Inbox(), Inbox()
    channel.on_broadcast("INSERT", messages)
    await channel.subscribe(states)
    if wait:
        await states.state("SUBSCRIBED")
    return channel, messages, states


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_job_insert_by_a_user_is_broadcast_to_the_service_role(stack: Stack) -> None:
    await broadcast_contract(stack.conn)
    user = await make_user(stack.conn)
    async with realtime_client(stack) as client:
        _, messages, _ = await join_private(client, TOPIC)
        job_id = await insert_job_as_user(stack.conn, user)
        message = await messages.next()
    assert message["event"] == "INSERT"
    assert message["payload"]["job_id"] == str(job_id)
    assert message["payload"]["id"] == message["meta"]["id"]  # realtime.send injects the message id
    assert "replayed" not in message["meta"]
    stored = await stack.conn.fetchval("select count(*) from realtime.messages where topic = $1"
                                       " and private and extension = 'broadcast'", TOPIC)
    assert stored == 1


async def test_private_join_is_refused_as_the_real_server_words_it(stack: Stack) -> None:
    await broadcast_contract(stack.conn)
    # a project policy letting signed-in users read every private topic of their own
    await stack.conn.execute("create policy users_read_rooms on realtime.messages for select"
                             " to authenticated using (true)")
    token = stack.keys.user_token(await make_user(stack.conn), issuer=f"{stack.url}/auth/v1")
    async with realtime_client(stack, token) as client:
        _, _, room = await join_private(client, "room-1")  # the policy lets them in here
        _, _, states = await join_private(client, TOPIC, wait=False)
        error = await states.state("CHANNEL_ERROR")
    assert json.loads(str(error)) == {"reason": "Unauthorized: You do not have permissions to read"
                                                " from this Channel topic: worker:jobs"}
    assert "SUBSCRIBED" in [state for state, _ in room.items]


async def test_private_join_without_any_policy_is_refused(stack: Stack) -> None:
    token = stack.keys.user_token(await make_user(stack.conn), issuer=f"{stack.url}/auth/v1")
    async with realtime_client(stack, token) as client:
        _, _, states = await join_private(client, "room-1", wait=False)
        error = await states.state("CHANNEL_ERROR")
    assert json.loads(str(error))["reason"].startswith("Unauthorized: ")


async def test_replay_sends_the_newest_since_marked_and_in_order(stack: Stack) -> None:
    await stack.conn.execute("create policy read_all on realtime.messages for select to service_role"
                             " using (true)")
    since = now_ms() - 1000
    sent = []
    for index in range(30):
        await stack.conn.execute("select realtime.send($1::jsonb, 'INSERT', 'history', true)",
                                 json.dumps({"n": index}))
        sent.append(index)
    await stack.conn.execute("select realtime.send('{\"n\": -1}', 'INSERT', 'other', true)")
    async with realtime_client(stack) as client:
        _, messages, _ = await join_private(client, "history", {"since": since, "limit": 50})
        replayed = [await messages.next() for _ in range(25)]
        _, later, _ = await join_private(client, "history-later", {"since": now_ms() + 60_000})
    assert [m["payload"]["n"] for m in replayed] == sent[5:]  # the 25 newest, oldest first
    assert all(m["meta"]["replayed"] is True for m in replayed)
    assert len({m["meta"]["id"] for m in replayed}) == 25
    assert later.items == []


async def test_replay_on_a_public_channel_or_with_bad_params_is_refused(stack: Stack) -> None:
    async with realtime_client(stack) as client:
        config: Any = {"config": {"broadcast": {"replay": {"since": 0}}, "private": False}}
        public = client.channel("open", config)
        states = Inbox()
        await public.subscribe(states)
        refused = await states.state("CHANNEL_ERROR")
        _, _, bad = await join_private(client, "bad", {"since": "yesterday"}, wait=False)  # type: ignore[dict-item]
        invalid = await bad.state("CHANNEL_ERROR")
    assert json.loads(str(refused)) == {
        "reason": "UnableToReplayMessages: Replay is not allowed for public channels"}
    assert json.loads(str(invalid)) == {"reason": "UnableToReplayMessages: Replay params are not valid"}


async def test_public_and_private_messages_stay_apart(stack: Stack) -> None:
    async with realtime_client(stack) as client:
        _, private, _ = await join_private(client, "mixed")
        public_channel = client.channel("mixed-public")
        public = Inbox()
        public_channel.on_broadcast("INSERT", public)
        await public_channel.subscribe()
        for to, topic, is_private in (("public", "mixed-public", False), ("private", "mixed", True),
                                      ("nobody", "mixed", False)):
            await stack.conn.execute("select realtime.send($1::jsonb, 'INSERT', $2, $3)",
                                     json.dumps({"to": to}), topic, is_private)
        got_public, got_private = await public.next(), await private.next()
        await stack.realtime.sync()
    assert got_public["payload"]["to"] == "public" and got_private["payload"]["to"] == "private"
    assert len(private.items) == 1 and len(public.items) == 1


async def test_server_timing_polls_changes_in_batches_and_streams_broadcast(stack: Stack) -> None:
    await broadcast_contract(stack.conn)
    stack.faults.realtime_timing = "server"
    user = await make_user(stack.conn, balance=200)
    async with realtime_client(stack) as client:
        sub = await listen(client, "polled", ("INSERT", "jobs", None))
        _, messages, _ = await join_private(client, TOPIC)
        async with stack.conn.transaction():
            ids = [await insert_job(stack.conn, user) for _ in range(150)]
        changes = [(await sub.changes[0].next())["data"]["record"]["id"] for _ in ids]
        broadcasts = [(await messages.next())["payload"]["job_id"] for _ in ids]
    assert changes == [str(i) for i in ids] and broadcasts == changes
    batches = list(stack.realtime.poll_batches)
    assert sum(batches) == 150 and max(batches) == 100  # at most 100 changes a poll
