"""Fixtures that start the devstack in-process over real sockets (owned by the devstack work)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
async def supabase_client(url: str, key: str, *, jwt: str | None = None) -> AsyncIterator[AsyncClient]:
    """The official async client with an HTTP pool this helper closes (no ResourceWarning).

    With ``jwt`` it sends that token as ``Authorization: Bearer`` beside the ``apikey``, as the
    app's server client does for a signed-in user's session."""
    http = httpx.AsyncClient(timeout=httpx.Timeout(20.0, connect=5.0))
    options = AsyncClientOptions(httpx_client=http)
    if jwt is not None:
        options.headers = {**options.headers, "Authorization": f"Bearer {jwt}"}
    try:
        yield await acreate_client(url, key, options)
    finally:
        with anyio.CancelScope(shield=True):
            await http.aclose()


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
