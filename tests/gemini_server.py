"""Serving the fake Gemini alone on a free 127.0.0.1 port, for the Gemini tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestServer

from realtime_worker_devstack.gemini import GeminiFake


@asynccontextmanager
async def serving(fake: GeminiFake) -> AsyncIterator[str]:
    """The fake's routes in their own app; yields the base URL."""
    app = web.Application()
    fake.add_routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()
