"""Supabase Storage behind one port: download inputs, upload outputs, remove outputs.

:class:`Storage` is what the pipeline uses; :class:`SupabaseStorage` is the real adapter over
the official async client. storage3 and transport errors are translated here, at the
boundary: a missing object is :class:`ObjectNotFound`, an outage or time-out is
:class:`StorageUnavailable` (worth a retry), anything else a plain :class:`StorageError`.
``testing.InMemoryStorage`` implements the same port for tests.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
from storage3.exceptions import StorageApiError

from realtime_worker.errors import StorageError
from realtime_worker.paths import ObjectPath

_LIBRARY_ERRORS = (StorageApiError, httpx.HTTPError, OSError, ValueError)
# Every 5xx is temporary: storage-api's own (544 is its DatabaseTimeout) and Cloudflare's in
# front of it (520, 522, 524 reach us as an unparsable page with that status). Below 500 only
# a time-out, an object locked by a concurrent upload (423) and a rate limit are.
TRANSIENT_STATUSES = frozenset({408, 423, 429})
FIRST_SERVER_STATUS = 500
# storage-api's error codes (storage3's ``code``) for trouble a later attempt can get past.
TRANSIENT_CODES = frozenset({"DatabaseTimeout", "DatabaseConnectionLimit", "LockTimeout",
                             "ResourceLocked", "SlowDown"})
NOT_FOUND_CODES = frozenset({"not_found", "NoSuchKey", "NoSuchBucket", "Bucket not found"})


class ObjectNotFound(StorageError):
    """The object (or its bucket) does not exist."""


class StorageUnavailable(StorageError):
    """Storage could not answer now (outage, overload, time-out, connection error)."""


class Storage(Protocol):
    async def download(self, path: ObjectPath) -> bytes: ...

    async def upload(self, path: ObjectPath, data: bytes, content_type: str) -> None: ...

    async def remove(self, path: ObjectPath) -> None:
        """Delete the object; one that is not there is not an error."""
        ...


class SupabaseStorage:
    """The port over ``client.storage`` of the official Supabase async client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def download(self, path: ObjectPath) -> bytes:
        try:
            data = await self._client.storage.from_(path.bucket).download(path.name)
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, "download", path) from exc
        return bytes(data)

    async def upload(self, path: ObjectPath, data: bytes, content_type: str) -> None:
        options = {"content-type": content_type, "upsert": "true"}
        try:
            await self._client.storage.from_(path.bucket).upload(path.name, data,
                                                                 file_options=options)
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, "upload", path) from exc

    async def remove(self, path: ObjectPath) -> None:
        # storage-api answers a missing object with an empty list, not an error.
        try:
            await self._client.storage.from_(path.bucket).remove([path.name])
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, "remove", path) from exc


def translate(exc: Exception, action: str, path: ObjectPath) -> StorageError:
    """The StorageError for a storage3, httpx or socket error."""
    where = f"{action} of {path.qualified}"
    if isinstance(exc, StorageApiError):
        return _api_error(exc, where)
    if isinstance(exc, httpx.TransportError | OSError):
        return StorageUnavailable(f"{where} failed: {type(exc).__name__}")
    # storage3 itself refuses dot segments and bad encodings with ValueError.
    return StorageError(f"{where} failed: {type(exc).__name__}: {exc}")


def _api_error(exc: StorageApiError, where: str) -> StorageError:
    status = _status(exc.status)
    detail = f"{where} failed: {status} {exc.code}: {exc.message}"
    if status == 404 or exc.code in NOT_FOUND_CODES:
        return ObjectNotFound(detail)
    if is_transient(status, exc.code):
        return StorageUnavailable(detail)
    return StorageError(detail)


def is_transient(status: int | None, code: str | None) -> bool:
    """Whether a Storage error answer (its HTTP status, its storage-api code) is worth a retry."""
    if code in TRANSIENT_CODES or status in TRANSIENT_STATUSES:
        return True
    return status is not None and status >= FIRST_SERVER_STATUS


def _status(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None
