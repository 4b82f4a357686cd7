"""The job domain: records, parameters, kinds and outcomes. No I/O (retries: :mod:`retry`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

from realtime_worker.errors import PermanentJobError

MAX_PROMPT_CHARS = 2000

E = TypeVar("E", bound=StrEnum)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobKind(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    EDIT = "edit"


class Complexity(StrEnum):
    SIMPLE = "simple"
    STANDARD = "standard"
    DETAILED = "detailed"


class LineThickness(StrEnum):
    THIN = "thin"
    MEDIUM = "medium"
    THICK = "thick"


class PaperSize(StrEnum):
    A4 = "A4"
    LETTER = "Letter"


class AssetKind(StrEnum):
    ORIGINAL = "original"
    PREPROCESSED = "preprocessed"
    EDGE_MAP = "edge_map"
    PDF = "pdf"
    THUMBNAIL = "thumbnail"


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass(frozen=True, kw_only=True)
class Job:
    """A row of ``public.jobs`` as the worker sees it."""

    id: UUID
    user_id: UUID
    status: JobStatus
    # ``params_json`` as stored: an object when the app behaves, any JSON value when it does not
    # (``parse_params`` names the problem). ``Any`` keeps ``params.get`` for the scripted processor.
    params: Any
    attempts: int
    max_attempts: int
    created_at: datetime | None = None
    locked_by: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        return cls(
            id=_uuid(row["id"]),
            user_id=_uuid(row["user_id"]),
            status=JobStatus(row["status"]),
            params=row.get("params_json"),
            attempts=int(row.get("attempts") or 0),
            max_attempts=int(row.get("max_attempts") or 3),
            created_at=_time(row.get("created_at")),
            locked_by=row.get("locked_by"),
        )


def lease_owner(worker_id: str, claim: str) -> str:
    """What one claim writes into ``jobs.locked_by``: the worker's id, ``#``, then what tells
    that claim apart from every other claim of any worker sharing the id."""
    return f"{worker_id}#{claim}"


def worker_of(locked_by: str) -> str:
    """The worker id in a ``locked_by`` written by :func:`lease_owner` (else the value itself)."""
    return locked_by.rpartition("#")[0] or locked_by


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """``params_json`` parsed and validated; the kind decided as in DESIGN.md."""

    kind: JobKind
    text_prompt: str | None = None
    asset_id: UUID | None = None
    edit_parent_id: UUID | None = None
    edit_prompt: str | None = None
    edit_source_asset_id: UUID | None = None
    complexity: Complexity = Complexity.STANDARD
    line_thickness: LineThickness = LineThickness.MEDIUM
    paper_size: PaperSize = PaperSize.A4
    title: str | None = None
    custom_prompt: str | None = None


def invalid(message: str) -> PermanentJobError:
    return PermanentJobError(message, code="invalid_params")


def _text(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"The field {key} must be text.")
    value = value.strip()
    if len(value) > MAX_PROMPT_CHARS:
        raise invalid(f"The field {key} is longer than {MAX_PROMPT_CHARS} characters.")
    return value or None


def _id(params: Mapping[str, Any], key: str) -> UUID | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    try:
        return UUID(str(value)) if isinstance(value, str) else _not_uuid(key)
    except ValueError:
        return _not_uuid(key)


def _not_uuid(key: str) -> UUID:
    raise invalid(f"The field {key} is not a valid id.")


def _choice(params: Mapping[str, Any], key: str, enum: type[E], default: E) -> E:
    value = params.get(key)
    if value is None or value == "":
        return default
    for member in enum:
        if isinstance(value, str) and value.lower() == member.value.lower():
            return member
    allowed = ", ".join(m.value for m in enum)
    raise invalid(f"The field {key} must be one of {allowed}.")


def decide_kind(edit_parent: UUID | None, edit_prompt: str | None, text: str | None,
                asset: UUID | None, edit_source: UUID | None) -> JobKind:
    """Edit (parent + prompt) first, then text, then image."""
    if edit_parent is not None and edit_prompt is not None:
        if edit_source is None:
            raise invalid("An edit needs the page to edit (edit_source_asset_id).")
        return JobKind.EDIT
    if text is not None:
        return JobKind.TEXT
    if asset is not None:
        return JobKind.IMAGE
    raise invalid("The job has nothing to draw: give a text prompt, a photo or an edit.")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def _not_an_object(params: object) -> PermanentJobError:
    """The error for a ``params_json`` that is not an object; names a double-encoded one.

    A JSON string holding an object (supabase-js ``params_json: JSON.stringify({...})``) is
    refused, not decoded: the row is wrong for every other reader of ``jobs`` too.
    """
    if isinstance(params, str):
        try:
            decoded = json.loads(params)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            return invalid("The job parameters arrived as a JSON string instead of an object"
                           " (encoded twice?).")
    return invalid(f"The job parameters are not an object (got {_json_type(params)}).")


def parse_params(params: object) -> JobRequest:
    """Validate ``params_json``; anything invalid is a permanent error a user can read."""
    if not isinstance(params, Mapping):
        raise _not_an_object(params)
    text, asset = _text(params, "text_prompt"), _id(params, "asset_id")
    parent, edit_prompt = _id(params, "edit_parent_id"), _text(params, "edit_prompt")
    source = _id(params, "edit_source_asset_id")
    return JobRequest(
        kind=decide_kind(parent, edit_prompt, text, asset, source),
        text_prompt=text,
        asset_id=asset,
        edit_parent_id=parent,
        edit_prompt=edit_prompt,
        edit_source_asset_id=source,
        complexity=_choice(params, "complexity", Complexity, Complexity.STANDARD),
        line_thickness=_choice(params, "line_thickness", LineThickness, LineThickness.MEDIUM),
        paper_size=_choice(params, "paper_size", PaperSize, PaperSize.A4),
        title=_text(params, "title"),
        custom_prompt=_text(params, "custom_prompt"),
    )


@dataclass(frozen=True, kw_only=True)
class AssetRecord:
    """One output file, as ``worker_complete_job`` inserts it into ``public.assets``."""

    kind: AssetKind
    storage_path: str
    bytes: int
    width: int | None
    height: int | None
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "storage_path": self.storage_path,
            "bytes": self.bytes,
            "width": self.width,
            "height": self.height,
            "hash": self.hash,
        }


@dataclass(frozen=True, kw_only=True)
class JobResult:
    """What a successful job hands to ``worker_complete_job``."""

    model: str
    cost_cents: int
    assets: tuple[AssetRecord, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "cost_cents": self.cost_cents,
            "assets": [a.to_json() for a in self.assets],
        }
