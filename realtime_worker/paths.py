"""Where objects live in Supabase Storage: output paths from validated ids, input paths checked.

``assets.storage_path`` holds the object's name inside its bucket (``<user>/<job>/edge.png``),
as every route of the app stores and searches it; the bucket follows from the asset's kind
(:data:`BUCKET_OF_KIND`). Outputs are built only from ``UUID`` values, so a job can never write
outside its user's folder. An input asset's ``storage_path`` comes from a table row and is checked
before use: no absolute paths, no dot or empty segments, no control characters; its first folder
must be the job's user (so a bucket-qualified ``originals/<user>/x.jpg``, a form the app never
writes, is refused too). The check runs on the path as the Storage client will request it
(percent-decoded), so an encoded ``..`` or ``/`` cannot slip through.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from uuid import UUID

from realtime_worker.jobs import AssetKind

ORIGINALS = "originals"
INTERMEDIATES = "intermediates"
ARTIFACTS = "artifacts"
ARTIFACTS_PREVIEWS = "artifacts_previews"
BUCKETS = frozenset({ORIGINALS, INTERMEDIATES, ARTIFACTS, ARTIFACTS_PREVIEWS})

BUCKET_OF_KIND: dict[AssetKind, str] = {
    AssetKind.ORIGINAL: ORIGINALS,
    AssetKind.PREPROCESSED: ORIGINALS,
    AssetKind.EDGE_MAP: INTERMEDIATES,
    AssetKind.THUMBNAIL: INTERMEDIATES,
    AssetKind.PDF: ARTIFACTS,
}

OUTPUT_FILES: dict[AssetKind, str] = {
    AssetKind.EDGE_MAP: "edge.png",
    AssetKind.THUMBNAIL: "thumbnail.png",
    AssetKind.PDF: "coloring_page.pdf",
}

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


class UnsafePath(ValueError):
    """A stored path that must not be used (traversal, absolute, another user's folder)."""


@dataclass(frozen=True)
class ObjectPath:
    """An object in a bucket; ``name`` is relative to the bucket."""

    bucket: str
    name: str

    @property
    def qualified(self) -> str:
        """``bucket/name``, for messages and logs; ``assets.storage_path`` holds ``name`` alone."""
        return f"{self.bucket}/{self.name}"


def output_path(kind: AssetKind, user_id: UUID, job_id: UUID) -> ObjectPath:
    """Where a job's output of ``kind`` goes: ``{user_id}/{job_id}/{file}`` in the kind's bucket."""
    if not isinstance(user_id, UUID) or not isinstance(job_id, UUID):
        raise TypeError("output paths are built from UUIDs only")
    return ObjectPath(BUCKET_OF_KIND[kind], f"{user_id}/{job_id}/{OUTPUT_FILES[kind]}")


def input_path(storage_path: object, kind: AssetKind, user_id: UUID) -> ObjectPath:
    """The object behind an asset row, checked; raises :class:`UnsafePath`."""
    if not isinstance(storage_path, str) or not storage_path:
        raise UnsafePath("the asset has no storage path")
    segments = _segments(storage_path)
    _segments(_decoded(storage_path))
    _check_owner(segments, user_id)
    return ObjectPath(BUCKET_OF_KIND[kind], storage_path)


def _decoded(path: str) -> str:
    try:
        return urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError as exc:
        raise UnsafePath("the path is not valid percent-encoded UTF-8") from exc


def _segments(path: str) -> list[str]:
    if path.startswith("/") or _UNSAFE.search(path):
        raise UnsafePath("absolute paths and control characters are not allowed")
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise UnsafePath("empty and dot segments are not allowed")
    return segments


def _check_owner(name: list[str], user_id: UUID) -> None:
    if len(name) < 2 or name[0] != str(user_id):
        raise UnsafePath("the object is not in the job's user's folder")
