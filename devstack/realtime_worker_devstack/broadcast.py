"""Broadcast from Database in the devstack's Realtime: what a join asks for and what a message is.

Pure helpers (no I/O) after supabase/realtime at 833cf36:
``lib/realtime_web/channels/realtime_channel.ex`` (private joins, ``can_replay?``,
``maybe_replay_messages``, the join refusals), ``lib/realtime/messages.ex`` (replay: since a
time in epoch milliseconds, at most 25, newest first then reversed) and
``lib/realtime_web/socket/user_broadcast.ex`` (the frame a vsn 1.0.0 client receives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HARD_LIMIT = 25  # the server never replays more per join
DEFAULT_LIMIT = 25  # a replay without ``limit``
# DateTime.from_unix(ms, :millisecond) accepts years -9999..9999; outside it the params are invalid.
MAX_SINCE_MS = 253_402_300_799_999
MIN_SINCE_MS = -377_705_116_800_000


class JoinRefused(Exception):
    """A join the server refuses; the text is the ``reason`` of the error reply."""


def unauthorized(name: str) -> JoinRefused:
    return JoinRefused(f"Unauthorized: You do not have permissions to read from this Channel topic: {name}")


@dataclass(frozen=True)
class Replay:
    since_ms: int
    limit: int


def is_private(config: Any) -> bool:
    return isinstance(config, dict) and config.get("private") is True


def replay_of(config: Any, private: bool) -> Replay | None:
    """The replay a join asks for (None: none), or JoinRefused as the server words it."""
    broadcast = config.get("broadcast") if isinstance(config, dict) else None
    if not isinstance(broadcast, dict) or "replay" not in broadcast:
        return None
    if not private:
        raise JoinRefused("UnableToReplayMessages: Replay is not allowed for public channels")
    params = broadcast["replay"]
    if not isinstance(params, dict):
        return None  # the server ignores a replay that is not an object
    since, limit = _integer(params.get("since")), _integer(params.get("limit") or DEFAULT_LIMIT)
    if since is None or limit is None or not MIN_SINCE_MS <= since <= MAX_SINCE_MS:
        raise JoinRefused("UnableToReplayMessages: Replay params are not valid")
    return Replay(since, max(1, min(limit, HARD_LIMIT)))


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Message:
    """One committed row of ``realtime.messages`` with ``extension = 'broadcast'``."""

    id: str
    topic: str
    event: str | None
    private: bool
    payload: Any

    def frame_payload(self, replayed: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"id": self.id}
        if replayed:
            meta["replayed"] = True
        return {"type": "broadcast", "event": self.event, "meta": meta, "payload": self.payload}


def message_from(body: dict[str, Any]) -> Message:
    return Message(str(body["id"]), body["topic"], body.get("event"), bool(body.get("private")),
                   body.get("payload"))
