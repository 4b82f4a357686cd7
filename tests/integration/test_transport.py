"""The Supabase client's HTTP transport (httpx over aiohttp) against real local servers.

The worker's REST and Storage traffic all goes through it, so bodies must arrive byte for
byte in both directions, httpx must still decode what the server compressed, and every
socket failure must surface as the httpx error the adapters already classify.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from aiohttp import web

from bench.harness import free_port
from realtime_worker import config, transport
from realtime_worker.config import WorkerSettings
from realtime_worker.errors import QueueError
from realtime_worker.queue import SupabaseQueue
from realtime_worker.worker import queue_rpc

pytestmark = pytest.mark.integration


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {"X-Method": request.method, "X-Length": str(len(body)),
               "X-Content-Type": request.headers.get("Content-Type", "")}
    return web.Response(body=body, headers=headers, content_type="application/octet-stream")


async def _compressed(_request: web.Request) -> web.Response:
    payload = json.dumps({"rows": list(range(500))}).encode()
    response = web.Response(body=gzip.compress(payload), content_type="application/json")
    response.headers["Content-Encoding"] = "gzip"
    return response


async def _teapot(_request: web.Request) -> web.Response:
    response = web.Response(status=418, reason="I'm a teapot", text="short and stout")
    response.headers.add("X-Tag", "one")
    response.headers.add("X-Tag", "two")
    return response


async def _never_answers(_request: web.Request) -> web.Response:
    await anyio.sleep(30)
    return web.Response()


async def _trickles(request: web.Request) -> web.StreamResponse:
    """100 bytes, one every 0.1 s: every read is in time, the whole answer takes 10 s."""
    response = web.StreamResponse()
    response.content_length = 100
    await response.prepare(request)
    for _ in range(100):
        await response.write(b"x")
        await anyio.sleep(0.1)
    return response


@asynccontextmanager
async def server() -> AsyncIterator[str]:
    app = web.Application(client_max_size=16 * 2**20)
    app.add_routes([web.route("*", "/echo", _echo), web.get("/gzip", _compressed),
                    web.get("/teapot", _teapot), web.get("/slow", _never_answers),
                    web.get("/trickle", _trickles)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_bodies_arrive_byte_for_byte_both_ways() -> None:
    blob = os.urandom(3 * 2**20)
    async with server() as url, transport.client(timeout=10) as http:
        answer = await http.put(f"{url}/echo", content=blob)
        files = await http.post(f"{url}/echo", files={"file": ("page.png", b"\x89PNG" + blob[:1000])})
        empty = await http.get(f"{url}/echo")
    assert answer.status_code == 200 and answer.content == blob
    assert answer.headers["X-Length"] == str(len(blob)) and answer.headers["X-Method"] == "PUT"
    assert files.headers["X-Content-Type"].startswith("multipart/form-data; boundary=")
    assert b"\x89PNG" + blob[:1000] in files.content  # the streamed multipart body, whole
    assert empty.status_code == 200 and empty.content == b"" and empty.headers["X-Method"] == "GET"


async def test_compressed_answers_are_decoded_and_headers_keep_repeats() -> None:
    async with server() as url, transport.client(timeout=10) as http:
        packed = await http.get(f"{url}/gzip")
        teapot = await http.get(f"{url}/teapot")
    assert packed.json() == {"rows": list(range(500))}
    assert teapot.status_code == 418 and teapot.reason_phrase == "I'm a teapot"
    assert teapot.headers.get_list("X-Tag") == ["one", "two"] and teapot.text == "short and stout"


async def test_refused_connection_is_httpx_connect_error() -> None:
    async with transport.client(timeout=5) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{free_port()}/")


async def test_silent_server_is_httpx_read_timeout() -> None:
    async with server() as url, transport.client(timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{url}/slow")


async def test_a_trickling_answer_is_cut_at_the_total_limit() -> None:
    async with server() as url, transport.client(timeout=5, total_timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout, match=r"within 0\.5 s"):
            await http.get(f"{url}/trickle")
        assert (await http.get(f"{url}/echo")).status_code == 200  # the client goes on working


@pytest.fixture
def untrusted_tls(tmp_path: Path) -> ssl.SSLContext:
    """A server-side TLS context with a self-signed certificate for 127.0.0.1."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_certificates_are_verified(untrusted_tls: ssl.SSLContext) -> None:
    app = web.Application()
    app.add_routes([web.get("/", _teapot)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=untrusted_tls).start()
    try:
        async with transport.client(timeout=5) as http:
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await http.get(f"https://127.0.0.1:{port}/")
    finally:
        await runner.cleanup()


async def test_connection_closed_without_answer_is_httpx_protocol_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def accept_and_close() -> None:
            peer, _ = listener.accept()
            peer.recv(65536)
            peer.close()

        async with anyio.create_task_group() as tg, transport.client(timeout=5) as http:
            tg.start_soon(anyio.to_thread.run_sync, accept_and_close)
            with pytest.raises(httpx.RemoteProtocolError):  # a POST: aiohttp retries a GET once
                await http.post(f"http://127.0.0.1:{port}/rest/v1/rpc/x", json={})


async def test_queue_over_the_transport_reports_an_unreachable_supabase_as_queue_error() -> None:

    settings = config.load(WorkerSettings, SUPABASE_URL=f"http://127.0.0.1:{free_port()}",
                           SUPABASE_SERVICE_ROLE_KEY="service-role-secret-for-this-test",
                           GEMINI_API_KEY="gemini-secret-for-this-test")
    async with queue_rpc(settings) as rpc:
        queue = SupabaseQueue(rpc)
        with pytest.raises(QueueError, match="worker_reap_expired failed: ConnectError") as caught:
            await queue.reap_expired(10)
    assert "service-role-secret" not in str(caught.value)
