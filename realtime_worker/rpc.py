"""PostgREST RPC as plain aiohttp POSTs: the queue's hot path, beside the Supabase client.

``POST <url>/rest/v1/rpc/<name>`` with the JSON arguments and the headers supabase-py's PostgREST
client sends for an RPC (``apikey``, ``Authorization: Bearer``, ``Content-Type: application/json``,
``Content-Profile``/``Accept-Profile: public``), with ``Accept: application/json`` where the client
lets httpx send ``*/*`` (PostgREST answers both with JSON) and no ``Accept-Encoding``: answers are
small and read as they come. Answers and errors keep the
shapes the queue already maps: a PostgREST error body (``{"code", "message", "details", "hint"}``)
raises postgrest's ``APIError``, and a connection or time-out failure raises the httpx error
``transport`` names for it (``ConnectError``, ``ReadTimeout``, …). Neither carries the key.

Why not the Supabase client: its request builders and httpx's request and response models cost
about 0.25 ms of CPU per call warm, and several times that after the process sat idle; the claim
sits on the pickup path (``bench/analysis.md``, issue 19). Storage and the table reads of the
checks stay on the client. No retries here, as on the client's path (postgrest-py retries only GET
and HEAD; an RPC is a POST): the dispatcher retries the writes that must land, and a claim or a
sweep that fails is simply tried again at the next wake-up.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import certifi
import httpx
from postgrest.exceptions import APIError

from realtime_worker import transport

SCHEMA = "public"


def headers(key: str) -> dict[str, str]:
    return {"apikey": key, "Authorization": f"Bearer {key}", "Content-Type": "application/json",
            "Accept": "application/json", "Content-Profile": SCHEMA, "Accept-Profile": SCHEMA}


class PostgrestRpc:
    """``await rpc(name, params)`` → the function's JSON answer, over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self._session = session
        self._base = f"{url.rstrip('/')}/rest/v1/rpc/"
        self._headers = headers(key)

    async def __call__(self, name: str, params: dict[str, Any]) -> Any:
        url = self._base + name
        try:
            async with self._session.post(url, data=json.dumps(params), headers=self._headers,
                                          allow_redirects=False) as answer:
                status, body = answer.status, await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc, url) from exc
        data = _json(body)
        if status >= 300:
            raise APIError(data if isinstance(data, dict) else _default_error(status, body))
        return data


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _default_error(status: int, body: bytes) -> dict[str, str]:
    """What postgrest-py makes of an error answer that is not PostgREST's JSON."""
    return {"code": str(status), "message": body[:200].decode(errors="replace") or "no body"}


def _transport_error(exc: BaseException, url: str) -> httpx.TransportError:
    error = transport.httpx_error(exc, httpx.Request("POST", url))
    assert error is not None  # every class caught by the caller is in transport's table
    return error


@asynccontextmanager
async def open_rpc(url: str, key: str, *, read_timeout: float = 30.0, connect_timeout: float = 5.0,
                   total_timeout: float | None = None,
                   max_connections: int = 64) -> AsyncIterator[PostgrestRpc]:
    """The RPC client and its connection pool, closed on the way out. ``total_timeout`` limits
    each whole call (a server trickling its answer still ends), ``read_timeout`` each read."""
    connector = aiohttp.TCPConnector(limit=max_connections,
                                     ssl=ssl.create_default_context(cafile=certifi.where()))
    limits = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout,
                                   sock_read=read_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=limits, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar(),
                                     skip_auto_headers=("User-Agent", "Accept-Encoding")) as session:
        yield PostgrestRpc(session, url, key)
