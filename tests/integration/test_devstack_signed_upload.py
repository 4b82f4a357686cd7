"""Signed uploads and signed reads as the app uses them, through the official client, signed in.

apps/web/app/api/upload/route.ts: ``createSignedUploadUrl('{user}/{id}.{ext}', {upsert: false})``
in ``originals`` with the user's session and an ``original`` asset row; the browser then PUTs
the file to the signed URL. The read routes sign with ``createSignedUrl(path, 3600)``.
"""

from __future__ import annotations

import time

import asyncpg
import httpx
import jwt
import pytest
from storage3.exceptions import StorageApiError
from storage3.types import CreateSignedUploadUrlOptions
from supabase import AsyncClient

from realtime_worker.devstack import users
from realtime_worker.devstack.server import Devstack
from tests.devstack_fixtures import file_options, rows, signed_in, supabase_client

pytestmark = pytest.mark.integration

JPEG = b"\xff\xd8\xff\xe0" + b"photo" * 20
NO_UPSERT = CreateSignedUploadUrlOptions(upsert="false")


async def sign(client: AsyncClient, name: str, bucket: str = "originals") -> tuple[str, str]:
    """The upload route's call: the signed URL and its token."""
    signed = await client.storage.from_(bucket).create_signed_upload_url(name, NO_UPSERT)
    return signed["signed_url"], signed["token"]


async def test_the_apps_upload_then_a_signed_read(devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await users.create(conn)
    name = f"{user}/V1StGXR8_Z5jdHi6B-myT.jpg"  # the route's `${user.id}/${nanoid()}.${ext}`
    async with signed_in(devstack, user) as client:
        url, token = await sign(client, name)
        created = await client.table("assets").insert({
            "user_id": str(user), "kind": "original", "storage_path": name, "bytes": len(JPEG)}).execute()
        bucket = client.storage.from_("originals")
        uploaded = await bucket.upload_to_signed_url(name, token, JPEG, {"content-type": "image/jpeg"})
        read = await bucket.create_signed_url(name, 3600)
    assert url.startswith(f"{devstack.url}/storage/v1/object/upload/sign/originals/{user}/") and token in url
    assert uploaded.full_path == f"originals/{name}"
    assert rows(created.data)[0]["storage_path"] == name
    async with httpx.AsyncClient() as http:
        assert (await http.get(str(read["signedURL"]))).content == JPEG
    row = await conn.fetchrow("select owner, metadata->>'mimetype' as mime from storage.objects"
                              " where bucket_id = 'originals' and name = $1", name)
    assert row is not None and (row["owner"], row["mime"]) == (user, "image/jpeg")


async def test_the_browser_puts_the_file_with_no_key(devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await users.create(conn)
    name = f"{user}/from-the-browser.heic"
    async with signed_in(devstack, user) as client:
        url, _ = await sign(client, name)
    async with httpx.AsyncClient() as http:
        put = await http.put(url, content=b"heic bytes", headers={"Content-Type": "image/heic"})
        again = await http.put(url, content=b"other bytes", headers={"Content-Type": "image/heic"})
    assert put.status_code == 200 and put.json()["Key"] == f"originals/{name}"
    assert (again.json()["statusCode"], again.json()["error"]) == ("409", "Duplicate")  # upsert: false
    path = devstack.storage.root / "originals" / name
    assert path.read_bytes() == b"heic bytes"


async def test_signing_is_refused_where_the_user_may_not_insert(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    alice, bob = await users.create(conn), await users.create(conn)
    async with signed_in(devstack, alice) as client:
        with pytest.raises(StorageApiError) as foreign:
            await sign(client, f"{bob}/x.jpg")
        with pytest.raises(StorageApiError) as workers_bucket:
            await sign(client, f"{alice}/j/edge.png", bucket="intermediates")
        await client.storage.from_("originals").upload(f"{alice}/taken.jpg", JPEG, file_options("image/jpeg"))
        with pytest.raises(StorageApiError) as taken:
            await sign(client, f"{alice}/taken.jpg")
    assert (foreign.value.status, workers_bucket.value.status, taken.value.status) == ("403", "403", "409")
    assert await conn.fetchval("select count(*) from storage.objects") == 1  # the trial inserts left nothing


async def test_the_bucket_mime_list_and_size_limit_apply(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    await conn.execute("insert into storage.buckets (id, name, file_size_limit, allowed_mime_types)"
                       " values ('tiny', 'tiny', 10, array['image/png'])")
    user = await users.create(conn)
    async with signed_in(devstack, user) as client:
        _, gif_token = await sign(client, f"{user}/x.gif")
        with pytest.raises(StorageApiError) as gif:
            await client.storage.from_("originals").upload_to_signed_url(
                f"{user}/x.gif", gif_token, b"GIF89a", {"content-type": "image/gif"})
    async with supabase_client(devstack.url, devstack.service_key) as service:
        _, big_token = await sign(service, "u/big.png", bucket="tiny")
        with pytest.raises(StorageApiError) as big:
            await service.storage.from_("tiny").upload_to_signed_url(
                "u/big.png", big_token, b"0123456789a", {"content-type": "image/png"})
    assert (gif.value.status, gif.value.message) == ("415", "mime type image/gif is not supported")
    assert (big.value.status, big.value.message) == ("413", "The object exceeded the maximum allowed size")
    assert await conn.fetchval("select count(*) from storage.objects") == 0


async def test_a_token_opens_only_its_own_object_and_only_for_upload(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await users.create(conn)
    async with signed_in(devstack, user) as client:
        url, token = await sign(client, f"{user}/a.jpg")
        await client.storage.from_("originals").upload(f"{user}/b.jpg", JPEG, file_options("image/jpeg"))
        read = await client.storage.from_("originals").create_signed_url(f"{user}/b.jpg", 60)
    expired = jwt.encode({**jwt.decode(token, options={"verify_signature": False}),
                          "exp": int(time.time()) - 5}, devstack.keys.secret, algorithm="HS256")
    download_token = str(read["signedURL"]).split("token=")[1]
    base = f"{devstack.url}/storage/v1/object/upload/sign/originals"
    async with httpx.AsyncClient() as http:
        other = await http.put(f"{base}/{user}/c.jpg?token={token}", content=JPEG,
                               headers={"Content-Type": "image/jpeg"})
        late = await http.put(f"{base}/{user}/a.jpg?token={expired}", content=JPEG,
                              headers={"Content-Type": "image/jpeg"})
        read_as_upload = await http.put(f"{base}/{user}/b.jpg?token={download_token}", content=JPEG,
                                        headers={"Content-Type": "image/jpeg"})
        upload_as_read = await http.get(url.replace("/object/upload/sign/", "/object/sign/"))
    assert other.json()["message"] == "The url do not match the signature"
    assert late.json()["message"] == "jwt expired"
    assert read_as_upload.json()["message"] == "The token is not an upload token"
    assert upload_as_read.json()["message"] == "The token is an upload token"
    assert all(r.status_code == 400 for r in (other, late, read_as_upload, upload_as_read))
    names = [r["name"] for r in await conn.fetch("select name from storage.objects")]
    assert names == [f"{user}/b.jpg"]
