"""Reading ``public.assets`` rows (a job's input photo or page) behind one port.

:class:`Assets` is what the pipeline uses; :class:`SupabaseAssets` reads through PostgREST with
the official client. A row that is missing, or too malformed to use, reads as ``None``;
PostgREST and transport errors become :class:`AssetLookupError`.
``testing.InMemoryAssets`` implements the same port for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import httpx
from loguru import logger
from postgrest.exceptions import APIError

from realtime_worker.errors import AdapterError
from realtime_worker.jobs import AssetKind

COLUMNS = "id,user_id,kind,storage_path"


class AssetLookupError(AdapterError):
    """The assets table could not be read (network, PostgREST, permissions)."""


@dataclass(frozen=True, kw_only=True)
class AssetRow:
    """The columns of an asset the worker needs to find its object."""

    id: UUID
    user_id: UUID
    kind: AssetKind
    storage_path: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AssetRow | None:
        """The row as read, or None when a column the worker needs is missing or invalid."""
        try:
            return cls(id=UUID(str(row["id"])), user_id=UUID(str(row["user_id"])),
                       kind=AssetKind(row["kind"]), storage_path=str(row["storage_path"]))
        except (KeyError, ValueError, TypeError):
            return None


class Assets(Protocol):
    async def get(self, asset_id: UUID) -> AssetRow | None: ...


class SupabaseAssets:
    """The port over ``client.table("assets")`` of the official Supabase async client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def get(self, asset_id: UUID) -> AssetRow | None:
        query = self._client.table("assets").select(COLUMNS).eq("id", str(asset_id)).limit(1)
        try:
            response = await query.execute()
        except APIError as exc:
            raise AssetLookupError(f"reading asset {asset_id} failed: {exc.code} {exc.message}") from exc
        except (httpx.HTTPError, OSError) as exc:
            raise AssetLookupError(f"reading asset {asset_id} failed: {type(exc).__name__}") from exc
        return _first(response.data, asset_id)


def _first(rows: Any, asset_id: UUID) -> AssetRow | None:
    if not rows:
        return None
    row = AssetRow.from_row(rows[0]) if isinstance(rows[0], Mapping) else None
    if row is None:
        logger.bind(event="asset_row_invalid", asset_id=str(asset_id)).warning(
            "asset row lacks a usable user, kind or storage path")
    return row
