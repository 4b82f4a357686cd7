"""The queue's RPCs as plain aiohttp POSTs: same request, same answers, same errors as the
Supabase client's PostgREST path they replace."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from supabase import AsyncClient

from realtime_worker.errors import QueueError
from realtime_worker.queue import SupabaseQueue
from realtime_worker.rpc import open_rpc
from realtime_worker_devstack.server import Devstack
from tests.devstack_fixtures import supabase_client
from tests.helpers import insert_job, make_user

pytestmark = pytest.mark.integration

Rpc = Callable[[str, dict[str, Any]], Awaitable[Any]]


def through_client(client: AsyncClient) -> Rpc:
    """The path this module replaced: supabase-py's PostgREST client."""
    async def rpc(name: str, params: dict[str, Any]) -> Any:
        return (await client.rpc(name, params).execute()).data

    return rpc


@asynccontextmanager
async def both(url: str, key: str) -> AsyncIterator[tuple[SupabaseQueue, SupabaseQueue]]:
    async with supabase_client(url, key) as client, open_rpc(url, key) as rpc:
        yield SupabaseQueue(through_client(client)), SupabaseQueue(rpc)


async def error_of(call: Awaitable[Any]) -> str:
    with pytest.raises(QueueError) as caught:
        await call
    return str(caught.value)


async def test_claims_answer_the_same_rows(devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    first, second = await insert_job(conn, user), await insert_job(conn, user)
    async with both(devstack.url, devstack.service_key) as (old, new):
        by_client = await old.claim_job(first, "w", 60)
        by_post = await new.claim_job(second, "w", 60)
        again = await new.claim_job(second, "w", 60)
        assert await new.heartbeat(second, "w", 60) is True
        assert await new.release(second, "w") is True
        assert await new.reap_expired(10) == 0
    assert by_client is not None and by_post is not None and again is None
    assert (by_client.id, by_post.id) == (first, second)
    assert by_post.attempts == by_client.attempts == 1


async def test_postgrest_errors_map_to_the_same_queue_errors(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    async with both(devstack.url, devstack.anon_key) as (old_anon, new_anon), \
            both(devstack.url, devstack.service_key) as (old, new):
        refused = [await error_of(q.reap_expired(1)) for q in (old_anon, new_anon)]
        bad_uuid = [await error_of(q._call("worker_claim_job", {"p_job_id": "nope", "p_worker": "w",
                                                                "p_lease_seconds": 60}))
                    for q in (old, new)]
        missing = [await error_of(q._call("worker_no_such_function", {})) for q in (old, new)]
        devstack.faults.update({"rest_error_fraction": 1.0, "rest_error_status": 503})
        unavailable = [await error_of(q.reap_expired(1)) for q in (old, new)]
    for pair in (refused, bad_uuid, missing, unavailable):
        assert pair[0] == pair[1]
    assert refused[0].startswith("worker_reap_expired failed: 42501 ")
    assert bad_uuid[0].startswith("worker_claim_job failed: 22P02 ")
    assert unavailable[0] == "worker_reap_expired failed: PGRST000 Injected fault"
    assert devstack.service_key not in "".join(refused + bad_uuid + missing + unavailable)


async def test_the_request_is_the_one_the_client_sends() -> None:
    seen: list[tuple[str, CIMultiDict[str], Any]] = []

    async def capture(request: web.Request) -> web.Response:
        seen.append((request.path, CIMultiDict(request.headers), await request.json()))
        return web.json_response([])

    async def gateway(_request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/rest/v1/rpc/worker_reap_expired", gateway)
    app.router.add_post("/rest/v1/rpc/{name}", capture)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    url, key = str(server.make_url("")).rstrip("/"), "a-key-for-this-test"
    try:
        job_id = uuid.uuid4()
        async with both(url, key) as (old, new):
            for queue in (old, new):
                assert await queue.claim_job(job_id, "w", 60) is None
            gateway_errors = [await error_of(queue.reap_expired(1)) for queue in (old, new)]
    finally:
        await server.close()
    (old_path, old_headers, old_body), (new_path, new_headers, new_body) = seen
    assert new_path == old_path == "/rest/v1/rpc/worker_claim_job"
    assert new_body == old_body == {"p_job_id": str(job_id), "p_worker": "w", "p_lease_seconds": 60}
    for name in ("apikey", "Authorization", "Content-Type", "Content-Profile", "Accept-Profile"):
        assert new_headers.get(name) == old_headers.get(name), name
    # httpx's default */*; PostgREST answers both with JSON
    assert (old_headers["Accept"], new_headers["Accept"]) == ("*/*", "application/json")
    assert "Accept-Encoding" not in new_headers  # the answer is read as it comes, never compressed
    assert json.dumps(list(new_headers.values())).count(key) == 2  # apikey and bearer, nowhere else
    assert gateway_errors[0].startswith("worker_reap_expired failed: ")
    assert "502" in gateway_errors[1]
