"""Fixtures that start the devstack in-process over real sockets (owned by the devstack work)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx
import pytest
from storage3.types import FileOptions
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from realtime_worker.devstack.server import Devstack, running

if TYPE_CHECKING:
    from tests.conftest import Database


def rows(data: object) -> list[dict[str, Any]]:
    """A PostgREST array answer, typed for the tests."""
    assert isinstance(data, list)
    return cast(list[dict[str, Any]], data)


def file_options(content_type: str, *, upsert: bool = False) -> FileOptions:
    options: FileOptions = {"content-type": content_type}
    if upsert:
        options["upsert"] = "true"
    return options


@asynccontextmanager
async def supabase_client(url: str, key: str, access_token: str | None = None) -> AsyncIterator[AsyncClient]:
    """The official async client with an HTTP pool this helper closes (no ResourceWarning);
    with ``access_token``, signed in: that token is the bearer of REST, Storage and Realtime."""
    http = httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0))
    headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
    try:
        client = await acreate_client(url, key, AsyncClientOptions(httpx_client=http, headers=headers))
        if access_token:
            await client.realtime.set_auth(access_token)
        yield client
    finally:
        with anyio.CancelScope(shield=True):
            await http.aclose()


def signed_in(devstack: Devstack, user_id: uuid.UUID, *,
              access_token: str | None = None) -> AbstractAsyncContextManager[AsyncClient]:
    """The official client as the app's server code holds it for a signed-in user: the anon key
    as ``apikey`` and the user's access token (Supabase-shaped, :meth:`Devstack.user_token`)."""
    return supabase_client(devstack.url, devstack.anon_key, access_token or devstack.user_token(user_id))


@pytest.fixture
async def devstack(db: Database, tmp_path: Path) -> AsyncIterator[Devstack]:
    """A devstack on a free 127.0.0.1 port over this test's fresh database."""
    async with running(database_dsn=db.dsn, data_dir=tmp_path / "devstack") as stack:
        yield stack


@pytest.fixture
async def supabase_service(devstack: Devstack) -> AsyncIterator[AsyncClient]:
    async with supabase_client(devstack.url, devstack.service_key) as client:
        yield client


@pytest.fixture
async def supabase_anon(devstack: Devstack) -> AsyncIterator[AsyncClient]:
    async with supabase_client(devstack.url, devstack.anon_key) as client:
        yield client
