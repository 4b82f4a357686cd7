"""The devstack's Storage, through the official storage3 client (and raw HTTP where the client
itself refuses to send a request)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest
from storage3.exceptions import StorageApiError
from supabase import AsyncClient

from realtime_worker_devstack.server import Devstack
from tests.devstack_fixtures import file_options
from tests.helpers import make_user

pytestmark = pytest.mark.integration

PNG = file_options("image/png")
PDF = file_options("application/pdf")


async def raw_request(devstack: Devstack, method: str, raw_path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request with the path sent byte for byte (no client-side normalisation)."""
    host, port = devstack.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (f"{method} {raw_path} HTTP/1.1\r\nHost: {host}\r\napikey: {devstack.service_key}\r\n"
            f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_upload_download_list_delete(
        supabase_service: AsyncClient, devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    bucket = supabase_service.storage.from_("originals")
    name = f"{user}/job-1/photo.png"
    uploaded = await bucket.upload(name, b"\x89PNG-bytes", PNG)
    assert uploaded.path == name
    assert (devstack.data_dir / "storage" / "originals" / name).read_bytes() == b"\x89PNG-bytes"
    metadata = await conn.fetchval("select metadata from storage.objects where name = $1", name)
    assert '"mimetype": "image/png"' in metadata and '"size": 10' in metadata
    assert await bucket.download(name) == b"\x89PNG-bytes"
    top = await bucket.list(str(user))
    assert [(e["name"], e["id"]) for e in top] == [("job-1", None)]
    inner = await bucket.list(f"{user}/job-1")
    assert [e["name"] for e in inner] == ["photo.png"] and inner[0]["metadata"]["size"] == 10
    removed = await bucket.remove([name])
    assert [r["name"] for r in removed] == [name]
    assert not (devstack.data_dir / "storage" / "originals" / name).exists()
    with pytest.raises(StorageApiError) as caught:
        await bucket.download(name)
    assert (caught.value.status, caught.value.message) == ("404", "Object not found")


async def test_upsert_semantics(supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    bucket = supabase_service.storage.from_("intermediates")
    name = f"{user}/j/edge.png"
    await bucket.upload(name, b"one", PNG)
    with pytest.raises(StorageApiError) as caught:
        await bucket.upload(name, b"two", PNG)
    assert (caught.value.status, caught.value.message) == ("409", "The resource already exists")
    assert await bucket.download(name) == b"one"
    await bucket.upload(name, b"three", file_options("image/png", upsert=True))
    assert await bucket.download(name) == b"three"
    await bucket.update(name, b"four", PNG)
    assert await bucket.download(name) == b"four"
    assert await conn.fetchval("select count(*) from storage.objects where name = $1", name) == 1


async def test_bucket_limits_and_unknown_bucket(
        supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    await conn.execute("insert into storage.buckets (id, name, file_size_limit, allowed_mime_types)"
                       " values ('tiny', 'tiny', 10, array['text/plain', 'image/*'])")
    tiny = supabase_service.storage.from_("tiny")
    await tiny.upload("a/fits.txt", b"0123456789", file_options("text/plain;charset=UTF-8"))
    await tiny.upload("a/wild.webp", b"webp", file_options("image/webp"))
    with pytest.raises(StorageApiError) as too_big:
        await tiny.upload("a/big.txt", b"0123456789a", file_options("text/plain"))
    assert (too_big.value.status, too_big.value.message) == (
        "413", "The object exceeded the maximum allowed size")
    with pytest.raises(StorageApiError) as bad_type:
        await supabase_service.storage.from_("intermediates").upload("u/x.pdf", b"%PDF", PDF)
    assert (bad_type.value.status, bad_type.value.message) == (
        "415", "mime type application/pdf is not supported")
    with pytest.raises(StorageApiError) as missing:
        await supabase_service.storage.from_("no-such-bucket").upload("u/x.png", b"png", PNG)
    assert (missing.value.status, missing.value.message) == ("404", "Bucket not found")
    with pytest.raises(StorageApiError):
        await supabase_service.storage.get_bucket("no-such-bucket")
    assert (await supabase_service.storage.get_bucket("originals")).id == "originals"
    assert {b.id for b in await supabase_service.storage.list_buckets()} >= {"originals", "artifacts"}


@pytest.mark.parametrize("raw_path", [
    "/storage/v1/object/originals/../escaped.png",
    "/storage/v1/object/originals/a/%2E%2E/%2E%2E/escaped.png",
    "/storage/v1/object/originals/a%2F..%2F..%2Fescaped.png",
    "/storage/v1/object/originals//abs/escaped.png",
    "/storage/v1/object/originals/a%5C..%5Cescaped.png",
    "/storage/v1/object/originals/a/%00.png",
    "/storage/v1/object/originals/a/./b.png",
])
async def test_path_escapes_are_refused(devstack: Devstack, raw_path: str) -> None:
    status, body = await raw_request(devstack, "POST", raw_path, b"png")
    assert status == 400, body
    assert b'"code": "InvalidKey"' in body
    stored = sorted(p.name for p in devstack.data_dir.rglob("*") if p.is_file())
    assert "escaped.png" not in stored and "b.png" not in stored


async def test_nul_and_dot_segments_through_the_client(supabase_service: AsyncClient) -> None:
    bucket = supabase_service.storage.from_("originals")
    with pytest.raises(StorageApiError) as caught:
        await bucket.upload("u/a\x00b.png", b"png", PNG)
    assert (caught.value.status, caught.value.code) == ("400", "InvalidKey")
    with pytest.raises(ValueError, match="dot segments"):  # storage3 refuses before sending
        await bucket.upload("../x.png", b"png", PNG)


async def test_signed_url_download(supabase_service: AsyncClient, conn: asyncpg.Connection) -> None:
    user = await make_user(conn)
    bucket = supabase_service.storage.from_("artifacts")
    name = f"{user}/job/coloring page.pdf"
    await bucket.upload(name, b"%PDF-1.7", file_options("application/pdf"))
    url = (await bucket.create_signed_url(name, 60))["signedURL"]
    assert url is not None
    async with httpx.AsyncClient() as http:  # no key at all: the token is the authorisation
        ok = await http.get(url)
        tampered = await http.get(url[:-3] + "abc")
        other = await http.get(url.replace("coloring%20page.pdf", "other.pdf"))
    assert (ok.status_code, ok.content, ok.headers["content-type"]) == (200, b"%PDF-1.7", "application/pdf")
    assert tampered.status_code == 400 and tampered.json()["error"] == "InvalidJWT"
    assert other.status_code == 400
    with pytest.raises(StorageApiError) as missing:
        await bucket.create_signed_url(f"{user}/job/none.pdf", 60)
    assert missing.value.status == "404"


async def test_storage_fault(supabase_service: AsyncClient, devstack: Devstack) -> None:
    devstack.faults.update({"storage_error_fraction": 1.0, "storage_error_status": 503})
    bucket = supabase_service.storage.from_("originals")
    with pytest.raises(StorageApiError) as caught:
        await bucket.upload(f"{uuid.uuid4()}/x.png", b"png", PNG)
    assert caught.value.status == "503"
    devstack.faults.reset()
    await bucket.upload(f"{uuid.uuid4()}/x.png", b"png", PNG)


async def test_storage_fault_scoped_to_a_path_suffix(supabase_service: AsyncClient,
                                                     devstack: Devstack) -> None:
    """With a suffix set, only requests whose path ends with it fail; the rest of Storage works."""
    devstack.faults.update({"storage_error_fraction": 1.0, "storage_error_status": 413,
                            "storage_error_path_suffix": "/page.pdf"})
    bucket, folder = supabase_service.storage.from_("originals"), uuid.uuid4()
    with pytest.raises(StorageApiError) as caught:
        await bucket.upload(f"{folder}/page.pdf", b"%PDF-", file_options("application/pdf"))
    assert caught.value.status == "413"
    await bucket.upload(f"{folder}/page.png", b"png", PNG)
    assert await bucket.download(f"{folder}/page.png") == b"png"
    assert [r["name"] for r in await bucket.remove([f"{folder}/page.png"])] == [f"{folder}/page.png"]
