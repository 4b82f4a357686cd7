"""The HTTP transport under the Supabase client: httpx's API, aiohttp's connection pool.

supabase-py talks to PostgREST and Storage through an ``httpx.AsyncClient`` that the worker
passes in (``AsyncClientOptions(httpx_client=…)``). Its default transport (httpcore + h11) is
pure Python; on the claim path it cost up to a millisecond per request more than aiohttp's
C-accelerated HTTP/1.1 (``bench/analysis.md``). :class:`AiohttpTransport`
sends each request httpx built through one ``aiohttp.ClientSession`` and hands httpx back a
response, so everything above the socket — the Supabase client, its request builders and its
error types — is unchanged. aiohttp's errors become the httpx errors the adapters already
translate (``httpx.ConnectError``, ``httpx.ReadTimeout``, …).

Bodies are read whole in both directions: the worker's requests and answers are JSON and
images of a few MB at most, never streams.
"""

from __future__ import annotations

import io
import ssl
from typing import Any

import aiohttp
import anyio
import certifi
import httpx

LARGE_BODY = 2**20

# Most specific first: the first class an aiohttp error is an instance of decides.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientOSError, httpx.NetworkError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.TransportError),
    (TimeoutError, httpx.PoolTimeout),
)


def httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    """The httpx error for an aiohttp (or time-out) error; None for anything else."""
    for source, target in _ERRORS:
        if isinstance(exc, source):
            return target(str(exc) or type(exc).__name__, request=request)
    return None


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    limits: dict[str, float | None] = request.extensions.get("timeout", {})
    return aiohttp.ClientTimeout(total=None, connect=limits.get("pool"),
                                 sock_connect=limits.get("connect"), sock_read=limits.get("read"))


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests over one aiohttp session, created on first use inside the running loop.

    httpx's time-outs limit each read; ``total_seconds`` limits the whole call, so an answer
    that trickles in a byte at a time cannot hold a job (or a heartbeat) for ever.
    """

    def __init__(self, *, max_connections: int = 64, total_seconds: float | None = None) -> None:
        self._max_connections = max_connections
        self._total_seconds = total_seconds
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Certificates are checked against certifi's bundle, as httpx's own transport does.
            tls = ssl.create_default_context(cafile=certifi.where())
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=tls)
            # trust_env stays off: with it aiohttp looks for proxy variables and reads ~/.netrc on
            # every request (about 0.4 ms each on loopback); the worker needs neither.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            with anyio.fail_after(self._total_seconds):
                return await self._send(request)
        except TimeoutError:  # fail_after's own: _send turns aiohttp's into httpx errors
            raise httpx.ReadTimeout(f"no whole answer within {self._total_seconds:g} s",
                                    request=request) from None

    async def _send(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()  # a streamed body is sent with its length instead
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "transfer-encoding"]
        try:
            async with self._open().request(
                    request.method, str(request.url), headers=headers,
                    data=_payload(body), allow_redirects=False, timeout=_timeout(request),
                    skip_auto_headers=("Accept-Encoding", "User-Agent")) as answer:
                content = await answer.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = httpx_error(exc, request)
            assert error is not None  # every class caught here is in _ERRORS
            raise error from exc
        return httpx.Response(answer.status, headers=answer.raw_headers,
                              stream=httpx.ByteStream(content), request=request,
                              extensions=_extensions(answer))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _payload(body: bytes) -> bytes | io.BytesIO | None:
    """aiohttp sends a large ``bytes`` in one write and warns; a file object goes in chunks."""
    if not body:
        return None
    return io.BytesIO(body) if len(body) > LARGE_BODY else body


def _extensions(answer: aiohttp.ClientResponse) -> dict[str, Any]:
    extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
    if answer.reason:
        extensions["reason_phrase"] = answer.reason.encode("ascii", "replace")
    return extensions


def client(*, timeout: float = 30.0, connect_timeout: float = 5.0, max_connections: int = 64,
           total_timeout: float | None = None) -> httpx.AsyncClient:
    """The httpx client to hand to the Supabase client: aiohttp underneath. ``timeout`` limits
    each read, ``total_timeout`` a whole call."""
    transport = AiohttpTransport(max_connections=max_connections, total_seconds=total_timeout)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=connect_timeout),
                             transport=transport)
