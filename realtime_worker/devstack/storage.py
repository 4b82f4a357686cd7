"""Supabase Storage on ``/storage/v1``: files on disk, one ``storage.objects`` row per object.

Rows are read and written under the request's key, so the RLS policies on ``storage.objects``
decide who may upload, read, list or delete, as on Supabase. Errors keep storage-api's body
``{statusCode, code, error, message}`` and, like it, answer HTTP 400 for every non-500 error
(the real status travels in ``statusCode``).

Signed uploads, as the app's upload route uses them (``createSignedUploadUrl`` with the user's
session, then the browser PUTs the file): ``POST /object/upload/sign/{bucket}/{name}`` checks that
the caller may insert that object under RLS (a trial insert, rolled back) and that it does not
exist yet unless ``x-upsert``, then answers ``{url, token}``; the token (2 hours, scope
``upload``) names the object, its owner and whether it may replace one. ``PUT`` on that URL needs
no key, only the token: it stores the object as its owner, within the bucket's size limit and
MIME list.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio.to_thread
import asyncpg
import jwt
from aiohttp import web
from loguru import logger

from realtime_worker.devstack.db import Database
from realtime_worker.devstack.faults import Faults
from realtime_worker.devstack.rest import CLAIMS

if TYPE_CHECKING:
    from realtime_worker.devstack.db import PoolConnection

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # the global limit of a Supabase project on the free plan
SIGNED_UPLOAD_SECONDS = 2 * 3600  # storage-api's uploadSignedUrlExpirationTime default
UPLOAD_SCOPE = "upload"
_BUCKET_ID = re.compile(r"[A-Za-z0-9_.\-]+")
_SORT_COLUMNS = ("name", "updated_at", "created_at", "last_accessed_at")
_BUCKET_SQL = ("select id, name, coalesce(owner::text, '') as owner, public, file_size_limit,"
               " allowed_mime_types, created_at, updated_at from storage.buckets")
_OBJECT_COLUMNS = "id, name, bucket_id, owner, metadata, version, created_at, updated_at, last_accessed_at"


class StorageError(Exception):
    """An answer in storage-api's error shape."""

    def __init__(self, status: int, code: str, message: str, *, error: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.error = error or code
        self.http_status = http_status or (500 if status == 500 else 400)

    def response(self) -> web.Response:
        body = {"statusCode": str(self.status), "code": self.code, "error": self.error,
                "message": self.message}
        return web.json_response(body, status=self.http_status)


def no_such_bucket() -> StorageError:
    return StorageError(404, "NoSuchBucket", "Bucket not found", error="Bucket not found")


def no_such_key() -> StorageError:
    return StorageError(404, "NoSuchKey", "Object not found", error="not_found")


def invalid_key(key: str) -> StorageError:
    return StorageError(400, "InvalidKey", f"Invalid key: {key}")


def already_exists() -> StorageError:
    return StorageError(409, "KeyAlreadyExists", "The resource already exists", error="Duplicate")


def too_large() -> StorageError:
    return StorageError(413, "EntityTooLarge", "The object exceeded the maximum allowed size",
                        error="Payload too large")


def bad_mime(mimetype: str) -> StorageError:
    return StorageError(415, "InvalidMimeType", f"mime type {mimetype} is not supported",
                        error="invalid_mime_type")


def access_denied(message: str) -> StorageError:
    return StorageError(403, "AccessDenied", message, error="Unauthorized")


def invalid_jwt(message: str) -> StorageError:
    return StorageError(400, "InvalidJWT", message)


def from_postgres(exc: asyncpg.PostgresError) -> StorageError:
    state = str(exc.sqlstate or "")
    if state == "42501":
        return access_denied(str(getattr(exc, "message", exc)))
    if state == "23505":
        return already_exists()
    return StorageError(500, "DatabaseError", "database error")


def object_key(raw: str) -> str:
    """The object's name, refused when it could escape its bucket or is not a plain key."""
    unsafe = (not raw or len(raw) > 1024 or raw.startswith("/") or "\\" in raw
              or any(ord(ch) < 32 or ord(ch) == 127 for ch in raw)
              or any(part in ("", ".", "..") for part in raw.split("/")))
    if unsafe:
        raise invalid_key(raw)
    return raw


def bucket_name(raw: str) -> str:
    if not _BUCKET_ID.fullmatch(raw) or raw in (".", ".."):
        raise StorageError(400, "InvalidBucketName", "Bucket name invalid", error="Invalid Input")
    return raw


def mime_allowed(mimetype: str, allowed: list[str] | None) -> bool:
    if not allowed:
        return True
    base = mimetype.split(";", 1)[0].strip().lower()
    for entry in (a.lower() for a in allowed):
        if base == entry or (entry.endswith("/*") and base.startswith(entry[:-1])):
            return True
    return False


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class Bucket:
    id: str
    public: bool
    file_size_limit: int | None
    allowed_mime_types: list[str] | None


@dataclass(frozen=True)
class Upload:
    data: bytes
    mimetype: str
    cache_control: str


def object_metadata(upload: Upload) -> dict[str, Any]:
    """The ``metadata`` Supabase stores with an object."""
    return {
        "eTag": f'"{hashlib.md5(upload.data, usedforsecurity=False).hexdigest()}"',
        "size": len(upload.data),
        "mimetype": upload.mimetype,
        "cacheControl": upload.cache_control,
        "lastModified": iso(datetime.now(UTC)),
        "contentLength": len(upload.data),
        "httpStatusCode": 200,
    }


async def read_upload(request: web.Request) -> Upload:
    """A multipart form (``file`` + ``cacheControl``, as storage3 sends it) or a raw body."""
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        part = form.get("file")
        if not isinstance(part, web.FileField):
            raise StorageError(400, "InvalidRequest", "No content provided")
        data = part.file.read()
        mimetype = part.content_type or "application/octet-stream"
        cache = str(form.get("cacheControl") or "3600")
    else:
        data = await request.read()
        mimetype = request.headers.get("Content-Type", "application/octet-stream")
        cache = request.headers.get("Cache-Control", "3600")
    return Upload(data, mimetype, cache if cache.startswith("max-age") else f"max-age={cache}")


def upsert_header(request: web.Request) -> bool:
    return request.headers.get("x-upsert", "false").lower() == "true"


def insert_sql(upsert: bool) -> str:
    """An object's row; with ``upsert``, replacing the row of the same name."""
    return ("insert into storage.objects (bucket_id, name, owner, metadata) values ($1, $2, $3, $4)"
            + (" on conflict (bucket_id, name) do update set metadata = excluded.metadata,"
               " owner = excluded.owner, updated_at = now(), last_accessed_at = now()" if upsert else "")
            + " returning id")


def list_level(rows: list[asyncpg.Record], folder: str, search: str) -> list[dict[str, Any]]:
    """One level below ``folder``: sub-folders (no id) and files, as storage's search() lists them."""
    folders: dict[str, dict[str, Any]] = {}
    files: list[dict[str, Any]] = []
    for row in rows:
        head, sep, _ = row["name"][len(folder):].partition("/")
        if search and not head.lower().startswith(search.lower()):
            continue
        if sep:
            folders.setdefault(head, {"name": head, "id": None, "updated_at": None, "created_at": None,
                                      "last_accessed_at": None, "metadata": None})
        else:
            files.append({"name": head, "id": str(row["id"]), "updated_at": iso(row["updated_at"]),
                          "created_at": iso(row["created_at"]),
                          "last_accessed_at": iso(row["last_accessed_at"]), "metadata": row["metadata"]})
    return [*folders.values(), *files]


def sort_page(entries: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
    sort = options.get("sortBy") or {}
    column = str(sort.get("column")) if sort.get("column") in _SORT_COLUMNS else "name"
    descending = str(sort.get("order", "asc")).lower() == "desc"
    entries.sort(key=lambda e: (e[column] is None, e[column] or ""), reverse=descending)
    offset, limit = int(options.get("offset") or 0), int(options.get("limit") or 100)
    return entries[offset: offset + limit]


def _write_temp(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=folder, prefix=".upload-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return Path(name)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class Storage:
    """The ``/storage/v1`` routes over ``root/{bucket}/{name}`` and ``storage.objects``."""

    def __init__(self, db: Database, secret: str, faults: Faults, root: Path) -> None:
        self._db = db
        self._secret = secret
        self._faults = faults
        self.root = root.resolve()

    def routes(self) -> list[web.RouteDef]:
        base = "/storage/v1"
        obj = "{bucket}/{name:.+}"
        handle = self._handler
        return [
            web.get(f"{base}/bucket", handle(self._list_buckets)),
            web.get(f"{base}/bucket/{{bucket}}", handle(self._get_bucket)),
            web.post(f"{base}/object/list/{{bucket}}", handle(self._list)),
            web.post(f"{base}/object/upload/sign/{obj}", handle(self._sign_upload)),
            web.put(f"{base}/object/upload/sign/{obj}", handle(self._signed_upload)),
            web.post(f"{base}/object/sign/{{bucket}}", handle(self._sign_many)),
            web.post(f"{base}/object/sign/{obj}", handle(self._sign)),
            web.get(f"{base}/object/sign/{obj}", handle(self._signed_download)),
            web.get(f"{base}/object/authenticated/{obj}", handle(self._download)),
            web.get(f"{base}/object/info/{obj}", handle(self._info)),
            web.get(f"{base}/object/{obj}", handle(self._download)),
            web.post(f"{base}/object/{obj}", handle(self._upload)),
            web.put(f"{base}/object/{obj}", handle(self._update)),
            web.delete(f"{base}/object/{{bucket}}", handle(self._delete_many)),
            web.delete(f"{base}/object/{obj}", handle(self._delete_one)),
        ]

    def _handler(self, inner: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            if (request.path.endswith(self._faults.storage_error_path_suffix)
                    and self._faults.chance(self._faults.storage_error_fraction)):
                status = self._faults.storage_error_status
                return StorageError(status, "InternalError", "Injected fault", http_status=status).response()
            try:
                response: web.StreamResponse = await inner(request)
                return response
            except StorageError as err:
                return err.response()
            except asyncpg.PostgresError as exc:
                return from_postgres(exc).response()
            except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
                # The database connection (restart) or the client's (gone mid-upload) was lost:
                # an outage, as the REST side answers it, instead of an unhandled-exception 500.
                logger.bind(event="devstack.storage.connection_lost").warning(type(exc).__name__)
                return StorageError(503, "DatabaseError", "Database unavailable",
                                    http_status=503).response()
        return handle

    # --- helpers ------------------------------------------------------------------------------

    def _path(self, bucket: str, key: str) -> Path:
        folder = (self.root / bucket).resolve()
        path = (folder / key).resolve()
        if not path.is_relative_to(folder) or path == folder:
            raise invalid_key(key)
        return path

    async def _bucket(self, raw: str) -> Bucket:
        async with self._db.admin() as conn:
            row = await conn.fetchrow(
                "select id, public, file_size_limit, allowed_mime_types from storage.buckets where id = $1",
                bucket_name(raw))
        if row is None:
            raise no_such_bucket()
        return Bucket(row["id"], row["public"], row["file_size_limit"], row["allowed_mime_types"])

    async def _target(self, request: web.Request) -> tuple[Bucket, str]:
        bucket = await self._bucket(request.match_info["bucket"])
        return bucket, object_key(request.match_info["name"])

    @staticmethod
    def _claims(request: web.Request) -> dict[str, Any]:
        return request[CLAIMS]

    @staticmethod
    def _owner(claims: dict[str, Any]) -> str | None:
        sub = claims.get("sub")
        return str(sub) if sub and re.fullmatch(r"[0-9a-fA-F-]{36}", str(sub)) else None

    async def _file_response(self, bucket: str, key: str, metadata: dict[str, Any] | None) -> web.Response:
        path = self._path(bucket, key)
        try:
            data = await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            raise no_such_key() from None
        meta = metadata or {}
        headers = {"Cache-Control": str(meta.get("cacheControl", "no-cache")),
                   "ETag": str(meta.get("eTag", "")),
                   "Last-Modified": format_datetime(datetime.now(UTC), usegmt=True)}
        return web.Response(body=data, headers=headers,
                            content_type=str(meta.get("mimetype", "application/octet-stream")).split(";")[0])

    # --- uploads ------------------------------------------------------------------------------

    def _check(self, bucket: Bucket, upload: Upload) -> None:
        limit = min(bucket.file_size_limit or MAX_UPLOAD_BYTES, MAX_UPLOAD_BYTES)
        if len(upload.data) > limit:
            raise too_large()
        if not mime_allowed(upload.mimetype, bucket.allowed_mime_types):
            raise bad_mime(upload.mimetype)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        return await self._store(request, insert_sql(upsert_header(request)))

    async def _update(self, request: web.Request) -> web.StreamResponse:
        verb = ("update storage.objects set metadata = $4, owner = coalesce($3, owner), updated_at = now(),"
                " last_accessed_at = now() where bucket_id = $1 and name = $2 returning id")
        return await self._store(request, verb)

    async def _store(self, request: web.Request, sql: str) -> web.StreamResponse:
        bucket, key = await self._target(request)
        claims = self._claims(request)
        return await self._write(request, bucket, key, sql, self._owner(claims), self._db.as_role(claims))

    async def _write(self, request: web.Request, bucket: Bucket, key: str, sql: str, owner: str | None,
                     connection: AbstractAsyncContextManager[PoolConnection]) -> web.StreamResponse:
        """The request's body stored at ``bucket/key`` by ``sql``, run on ``connection`` (a transaction)."""
        upload = await read_upload(request)
        self._check(bucket, upload)
        dest = self._path(bucket.id, key)
        temp = await anyio.to_thread.run_sync(_write_temp, dest.parent, upload.data)
        try:
            async with connection as conn:
                row = await conn.fetchrow(sql, bucket.id, key, owner, object_metadata(upload))
                if row is None:
                    raise no_such_key()
                os.replace(temp, dest)  # inside the transaction: a failed commit leaves no orphan row
        finally:
            temp.unlink(missing_ok=True)
        return web.json_response({"Id": str(row["id"]), "Key": f"{bucket.id}/{key}"})

    # --- signed uploads -------------------------------------------------------------------------

    async def _sign_upload(self, request: web.Request) -> web.StreamResponse:
        bucket, key = await self._target(request)
        claims, upsert = self._claims(request), upsert_header(request)
        owner = self._owner(claims)
        async with self._db.as_role(claims) as conn:
            if not upsert and await self._exists(bucket.id, key):
                raise already_exists()
            trial = conn.transaction()  # may this caller insert it? (RLS decides; nothing stays)
            await trial.start()
            try:
                await conn.fetchrow(insert_sql(upsert), bucket.id, key, owner, {})
            finally:
                await trial.rollback()
        now = int(time.time())
        token = jwt.encode({"owner": owner, "url": f"{bucket.id}/{key}", "upsert": upsert,
                            "scope": UPLOAD_SCOPE, "iat": now, "exp": now + SIGNED_UPLOAD_SECONDS},
                           self._secret, algorithm="HS256")
        return web.json_response({"url": f"/object/upload/sign/{bucket.id}/{quote(key)}?token={token}",
                                  "token": token})

    async def _exists(self, bucket: str, key: str) -> bool:
        async with self._db.admin() as conn:
            found = await conn.fetchval("select exists (select 1 from storage.objects"
                                        " where bucket_id = $1 and name = $2)", bucket, key)
        return bool(found)

    async def _signed_upload(self, request: web.Request) -> web.StreamResponse:
        bucket, key = await self._target(request)
        claims = self._url_token(request, bucket.id, key)
        if claims.get("scope") != UPLOAD_SCOPE:
            raise StorageError(400, "InvalidSignature", "The token is not an upload token")
        upsert = bool(claims.get("upsert"))
        if not upsert and await self._exists(bucket.id, key):
            raise already_exists()
        owner = claims.get("owner")
        return await self._write(request, bucket, key, insert_sql(upsert), owner, self._as_owner())

    @asynccontextmanager
    async def _as_owner(self) -> AsyncIterator[PoolConnection]:
        """A transaction as the database owner, as storage-api's super user writes signed uploads."""
        async with self._db.admin() as conn, conn.transaction():
            yield conn

    # --- downloads ----------------------------------------------------------------------------

    async def _visible(self, request: web.Request, bucket: str, key: str) -> asyncpg.Record:
        async with self._db.as_role(self._claims(request)) as conn:
            row = await conn.fetchrow(
                f"select {_OBJECT_COLUMNS} from storage.objects where bucket_id = $1 and name = $2",
                bucket, key)
        if row is None:
            raise no_such_key()
        return row

    async def _download(self, request: web.Request) -> web.StreamResponse:
        bucket, key = await self._target(request)
        row = await self._visible(request, bucket.id, key)
        return await self._file_response(bucket.id, key, row["metadata"])

    async def _info(self, request: web.Request) -> web.StreamResponse:
        bucket, key = await self._target(request)
        row = await self._visible(request, bucket.id, key)
        meta = row["metadata"] or {}
        return web.json_response({
            "id": str(row["id"]), "name": key, "bucket_id": bucket.id, "version": row["version"],
            "size": meta.get("size"), "content_type": meta.get("mimetype"),
            "cache_control": meta.get("cacheControl"), "etag": meta.get("eTag"), "metadata": {},
            "last_modified": meta.get("lastModified"), "created_at": iso(row["created_at"])})

    # --- signed URLs ----------------------------------------------------------------------------

    def _signed_url(self, bucket: str, key: str, expires_in: int) -> str:
        now = int(time.time())
        token = jwt.encode({"url": f"{bucket}/{key}", "iat": now, "exp": now + expires_in},
                           self._secret, algorithm="HS256")
        return f"/object/sign/{bucket}/{quote(key)}?token={token}"

    @staticmethod
    async def _expires_in(request: web.Request) -> tuple[dict[str, Any], int]:
        try:
            body = await request.json()
            seconds = int(body["expiresIn"])
        except (ValueError, KeyError, TypeError):
            message = "body must have required property 'expiresIn'"
            raise StorageError(400, "InvalidRequest", message) from None
        if seconds < 1:
            raise StorageError(400, "InvalidRequest", "expiresIn must be at least 1")
        return body, seconds

    async def _sign(self, request: web.Request) -> web.StreamResponse:
        bucket, key = await self._target(request)
        _, seconds = await self._expires_in(request)
        await self._visible(request, bucket.id, key)
        return web.json_response({"signedURL": self._signed_url(bucket.id, key, seconds)})

    async def _sign_many(self, request: web.Request) -> web.StreamResponse:
        bucket = await self._bucket(request.match_info["bucket"])
        body, seconds = await self._expires_in(request)
        paths = [object_key(str(p)) for p in body.get("paths") or []]
        async with self._db.as_role(self._claims(request)) as conn:
            found = {r["name"] for r in await conn.fetch(
                "select name from storage.objects where bucket_id = $1 and name = any($2::text[])",
                bucket.id, paths)}
        missing = "Either the object does not exist or you do not have access to it"
        return web.json_response([
            {"path": p, "error": None if p in found else missing,
             "signedURL": self._signed_url(bucket.id, p, seconds) if p in found else None}
            for p in paths])

    def _url_token(self, request: web.Request, bucket: str, key: str) -> dict[str, Any]:
        """The claims of the ``?token=`` of a signed URL, which must name this object."""
        try:
            claims: dict[str, Any] = jwt.decode(request.query.get("token", ""), self._secret,
                                                algorithms=["HS256"], options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise invalid_jwt("jwt expired") from None
        except jwt.InvalidSignatureError:
            raise invalid_jwt("invalid signature") from None
        except jwt.PyJWTError:
            raise invalid_jwt("jwt malformed") from None
        if claims.get("url") != f"{bucket}/{key}":
            raise StorageError(400, "InvalidSignature", "The url do not match the signature")
        return claims

    async def _signed_download(self, request: web.Request) -> web.StreamResponse:
        bucket, key = await self._target(request)
        if self._url_token(request, bucket.id, key).get("scope") == UPLOAD_SCOPE:
            raise StorageError(400, "InvalidSignature", "The token is an upload token")
        async with self._db.admin() as conn:
            metadata = await conn.fetchval(
                "select metadata from storage.objects where bucket_id = $1 and name = $2", bucket.id, key)
        return await self._file_response(bucket.id, key, metadata)

    # --- listing and deleting ---------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.StreamResponse:
        bucket = await self._bucket(request.match_info["bucket"])
        try:
            options = await request.json()
        except ValueError:
            options = {}
        prefix = str(options.get("prefix") or "").strip("/")
        folder = f"{prefix}/" if prefix else ""
        pattern = folder.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        async with self._db.as_role(self._claims(request)) as conn:
            rows = await conn.fetch(
                f"select {_OBJECT_COLUMNS} from storage.objects where bucket_id = $1 and name like $2",
                bucket.id, pattern)
        entries = list_level(list(rows), folder, str(options.get("search") or ""))
        return web.json_response(sort_page(entries, options))

    async def _delete_rows(self, request: web.Request, bucket: str, names: list[str]) -> str:
        async with self._db.as_role(self._claims(request)) as conn:
            row = await conn.fetchrow(
                "with d as (delete from storage.objects where bucket_id = $1 and name = any($2::text[])"
                f" returning {_OBJECT_COLUMNS}) select coalesce(json_agg(d), '[]')::text as rows,"
                " coalesce(array_agg(d.name), '{}') as names from d", bucket, names)
            assert row is not None
        await anyio.to_thread.run_sync(_remove, [self._path(bucket, name) for name in row["names"]])
        text: str = row["rows"]
        return text

    async def _delete_many(self, request: web.Request) -> web.StreamResponse:
        bucket = await self._bucket(request.match_info["bucket"])
        try:
            prefixes = (await request.json())["prefixes"]
        except (ValueError, KeyError, TypeError):
            raise StorageError(400, "InvalidRequest", "body must have required property 'prefixes'") from None
        names = [object_key(str(p)) for p in prefixes]
        return web.Response(text=await self._delete_rows(request, bucket.id, names),
                            content_type="application/json")

    async def _delete_one(self, request: web.Request) -> web.StreamResponse:
        bucket, key = await self._target(request)
        if json.loads(await self._delete_rows(request, bucket.id, [key])) == []:
            raise no_such_key()
        return web.json_response({"message": "Successfully deleted"})

    # --- buckets ----------------------------------------------------------------------------------

    async def _list_buckets(self, request: web.Request) -> web.StreamResponse:
        async with self._db.as_role(self._claims(request)) as conn:
            text = await conn.fetchval(f"select coalesce(json_agg(b order by b.name), '[]')::text"
                                       f" from ({_BUCKET_SQL}) b")
        return web.Response(text=str(text), content_type="application/json")

    async def _get_bucket(self, request: web.Request) -> web.StreamResponse:
        async with self._db.as_role(self._claims(request)) as conn:
            text = await conn.fetchval(f"select to_json(b)::text from ({_BUCKET_SQL}) b where b.id = $1",
                                       bucket_name(request.match_info["bucket"]))
        if text is None:
            raise no_such_bucket()
        return web.Response(text=str(text), content_type="application/json")
