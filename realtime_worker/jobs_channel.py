"""The Realtime channel shapes of the worker, on an official supabase client closed quietly
whatever happened: ``postgres_changes`` INSERT on ``public.jobs``, or the private Broadcast topic
``worker:jobs`` that migration 0020's trigger sends to. The listener and ``check`` both open them,
so ``check`` joins exactly as the worker will.

supabase and realtime are imported when a channel is opened: they take a while to import, and
the worker loads them in the background after its health server is up.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from realtime import AsyncRealtimeChannel
    from realtime.types import ReplayOption
    from supabase import AsyncClient
    from supabase.types import RealtimeClientOptions

BROADCAST_TOPIC = "worker:jobs"  # fixed by the migration 0020_broadcast_wakeup
REPLAY_LIMIT = 25  # the most the server replays per join


@asynccontextmanager
async def jobs_client(url: str, key: str, options: RealtimeClientOptions) -> AsyncIterator[AsyncClient]:
    """An official async client for the project, closed quietly whatever happened."""
    from supabase import AsyncClientOptions, acreate_client

    client = await acreate_client(url, key, options=AsyncClientOptions(realtime=options))
    try:
        yield client
    finally:
        with anyio.move_on_after(2, shield=True):
            await close_quietly(client)


def jobs_inserts_channel(client: AsyncClient, channel_name: str,
                         on_insert: Callable[[Any], None]) -> AsyncRealtimeChannel:
    """The channel of ``postgres_changes`` INSERTs on ``public.jobs``, not yet subscribed."""
    from realtime.types import RealtimePostgresChangesListenEvent

    channel = client.channel(channel_name)
    channel.on_postgres_changes(RealtimePostgresChangesListenEvent.Insert, schema="public",
                                table="jobs", callback=on_insert)
    return channel


def broadcast_channel(client: AsyncClient, topic: str, replay: ReplayOption,
                      on_broadcast: Callable[[Any], None]) -> AsyncRealtimeChannel:
    """The private channel on ``topic`` with Broadcast INSERTs bound, not yet subscribed. The join
    payload holds ``replay`` itself ({since, limit}), and realtime-py sends it again on every
    rejoin: whoever keeps ``since`` current decides what each rejoin asks to be replayed."""
    return client.channel(topic, {"config": {
        "broadcast": {"ack": False, "self": False, "replay": replay},
        "presence": {"key": "", "enabled": False}, "private": True,
    }}).on_broadcast("INSERT", on_broadcast)


@asynccontextmanager
async def jobs_inserts(url: str, key: str, channel_name: str, options: RealtimeClientOptions,
                       on_insert: Callable[[Any], None], on_system: Callable[[Any], None],
                       ) -> AsyncIterator[tuple[AsyncClient, AsyncRealtimeChannel]]:
    """A client and its insert channel with the insert and system callbacks bound, not yet
    subscribed."""
    async with jobs_client(url, key, options) as client:
        channel = jobs_inserts_channel(client, channel_name, on_insert)
        channel.on_system(on_system)
        yield client, channel


async def close_quietly(client: AsyncClient) -> None:
    """Leave every channel and close the socket; a socket that never opened has nothing to
    release, so errors are dropped."""
    with contextlib.suppress(Exception):
        await client.realtime.remove_all_channels()
    with contextlib.suppress(Exception):
        await client.realtime.close()
