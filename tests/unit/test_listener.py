"""The Realtime callbacks only signal: they never raise, whatever the payload."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from realtime_worker.health_state import RealtimeLink
from realtime_worker.listener import Listener, ListenerSettings, SeenIds, job_id_of, reconnect_backoff
from realtime_worker.metrics import Metrics
from realtime_worker.retry import reconnect_delay

pytestmark = pytest.mark.unit


def listener(wakes: list[tuple[uuid.UUID | None, str]]) -> Listener:
    return Listener(ListenerSettings(url="http://127.0.0.1:1", key="k"),
                    lambda job_id, source: wakes.append((job_id, source)), Metrics(),
                    RealtimeLink())


def insert(record: Any) -> dict[str, Any]:
    return {"ids": [1], "data": {"type": "INSERT", "record": record}}


def test_insert_wakes_with_the_job_id() -> None:
    wakes: list[tuple[uuid.UUID | None, str]] = []
    job_id = uuid.uuid4()
    listener(wakes).on_insert(insert({"id": str(job_id), "status": "queued"}))
    assert wakes == [(job_id, "realtime")]


@pytest.mark.parametrize("payload", [
    None, 42, "text", {}, {"data": None}, insert(None), insert({"id": "not-a-uuid"}),
    insert({"status": "queued"}), insert({"id": 7}), {"data": {"record": []}},
])
def test_malformed_events_never_raise_and_still_hint(payload: Any) -> None:
    wakes: list[tuple[uuid.UUID | None, str]] = []
    listener(wakes).on_insert(payload)
    assert wakes == [(None, "catchup")]


def test_a_failing_wake_does_not_escape_the_callback() -> None:
    def boom(job_id: uuid.UUID | None, source: str) -> None:
        raise RuntimeError("dispatcher gone")

    subject = Listener(ListenerSettings(url="http://127.0.0.1:1", key="k"), boom, Metrics(),
                       RealtimeLink())
    subject.on_insert(insert({"id": str(uuid.uuid4()), "status": "queued"}))
    subject.on_system(0, object())
    subject.on_state(0, object(), RuntimeError("x"))


def test_non_queued_inserts_do_not_name_a_job() -> None:
    assert job_id_of(insert({"id": str(uuid.uuid4()), "status": "running"})) is None


def test_backoff_is_bounded_and_jittered() -> None:
    rng = random.Random(1)
    delays = [reconnect_delay(n, reconnect_backoff(0.5, 30.0), rng) for n in range(40)]
    assert all(0 <= d <= 30.0 for d in delays)
    assert len(set(delays)) == len(delays)
    assert max(reconnect_delay(1, reconnect_backoff(0.5, 30.0), rng) for _ in range(100)) <= 1.0


def broadcast(job_id: Any, message_id: str | None = None, replayed: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"id": message_id or str(uuid.uuid4())}
    if replayed:
        meta["replayed"] = True
    return {"type": "broadcast", "event": "INSERT", "meta": meta,
            "payload": {"job_id": job_id, "id": meta["id"]}}


def test_broadcast_wakes_once_per_message_id() -> None:
    wakes: list[tuple[uuid.UUID | None, str]] = []
    subject = listener(wakes)
    job_id, message_id = uuid.uuid4(), str(uuid.uuid4())
    subject.on_broadcast(broadcast(str(job_id), message_id))
    subject.on_broadcast(broadcast(str(job_id), message_id, replayed=True))  # seen live already
    later = uuid.uuid4()
    subject.on_broadcast(broadcast(str(later), replayed=True))
    assert wakes == [(job_id, "realtime"), (later, "replay")]
    assert subject.duplicates == 1


def test_broadcast_changes_rows_name_their_job_too() -> None:
    wakes: list[tuple[uuid.UUID | None, str]] = []
    job_id = uuid.uuid4()
    listener(wakes).on_broadcast({"event": "INSERT", "meta": {"id": "m1"}, "payload": {
        "id": "m1", "operation": "INSERT", "record": {"id": str(job_id), "status": "queued"}}})
    assert wakes == [(job_id, "realtime")]


def test_seen_ids_forget_the_oldest() -> None:
    seen = SeenIds(2)
    assert [seen.first_time(i) for i in ("a", "b", "a", "c", "a")] == [True, True, False, True, True]


@pytest.mark.parametrize("message", [
    None, 42, {}, {"meta": None, "payload": None}, broadcast("not-a-uuid"), broadcast(None),
    {"meta": {}, "payload": {"job_id": 7}},
])
def test_malformed_broadcasts_never_raise_and_still_hint(message: Any) -> None:
    wakes: list[tuple[uuid.UUID | None, str]] = []
    listener(wakes).on_broadcast(message)
    assert wakes == [(None, "catchup")]
