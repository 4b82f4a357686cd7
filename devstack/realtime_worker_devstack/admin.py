"""The devstack's admin endpoints under ``/admin``: fault settings, Realtime cuts, the Gemini log.

Only the service_role key may call them (``apikey`` header or ``Authorization: Bearer``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web
from loguru import logger

from realtime_worker_devstack.faults import Faults
from realtime_worker_devstack.gemini import GeminiFake
from realtime_worker_devstack.keys import InvalidKey, Keys
from realtime_worker_devstack.realtime import RealtimeServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _presented_key(request: web.Request) -> str:
    bearer = request.headers.get("Authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[7:].strip()
    return request.headers.get("apikey", "")


class Admin:
    """The ``/admin`` routes of one devstack."""

    def __init__(self, keys: Keys, faults: Faults, realtime: RealtimeServer, gemini: GeminiFake) -> None:
        self._keys = keys
        self._faults = faults
        self._realtime = realtime
        self._gemini = gemini

    def routes(self) -> list[web.RouteDef]:
        guard = self._service_only
        return [
            web.get("/admin/faults", guard(self._get_faults)),
            web.post("/admin/faults", guard(self._set_faults)),
            web.post("/admin/faults/reset", guard(self._reset_faults)),
            web.post("/admin/realtime/cut", guard(self._cut)),
            web.post("/admin/realtime/close", guard(self._close)),
            web.get("/admin/gemini/requests", guard(self._gemini_requests)),
        ]

    def _service_only(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                role = self._keys.verify(_presented_key(request)).get("role")
            except InvalidKey:
                role = None
            if role != "service_role":
                return web.json_response({"message": "The admin endpoints need the service_role key"},
                                         status=401)
            return await handler(request)
        return guarded

    async def _get_faults(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response(self._faults.to_json())

    async def _set_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            changes: Any = await request.json()
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            return web.json_response({"message": "expected a JSON object of fault settings"}, status=400)
        try:
            self._faults.update(changes)
        except ValueError as exc:
            return web.json_response({"message": str(exc)}, status=400)
        logger.bind(event="devstack.faults.updated", names=sorted(changes)).info("fault settings changed")
        return web.json_response(self._faults.to_json())

    async def _reset_faults(self, _request: web.Request) -> web.StreamResponse:
        self._faults.reset()
        return web.json_response(self._faults.to_json())

    async def _cut(self, _request: web.Request) -> web.StreamResponse:
        await self._realtime.cut_sockets()
        return web.json_response({"ok": True})

    async def _close(self, _request: web.Request) -> web.StreamResponse:
        await self._realtime.close_channels()
        return web.json_response({"ok": True})

    async def _gemini_requests(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response([asdict(r) for r in self._gemini.requests])
