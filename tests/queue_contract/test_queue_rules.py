"""The queue contract (DESIGN.md "Database contract"), each rule written once and run against
both ``InMemoryQueue`` (on a fake clock) and the SQL functions through ``SupabaseQueue``."""

from __future__ import annotations

from uuid import UUID, uuid4

from realtime_worker.jobs import AssetKind, AssetRecord, JobResult, JobStatus, lease_owner
from realtime_worker.testing import MAX_DEFERRALS
from tests.queue_contract.harness import Harness

A, B = lease_owner("w1", "claim-a"), lease_owner("w2", "claim-b")
SIBLING = lease_owner("w1", "claim-c")  # the same worker id, another claim: not the owner
RESULT = JobResult(model="m-1", cost_cents=4, assets=(
    AssetRecord(kind=AssetKind.EDGE_MAP, storage_path="u/j/edge.png", bytes=10, width=8,
                height=9, hash="abc"),
    AssetRecord(kind=AssetKind.PDF, storage_path="u/j/page.pdf", bytes=20, width=None,
                height=None, hash="def")))


async def claimed(h: Harness, *, max_attempts: int = 3, owner: str = A, lease: int = 60) -> UUID:
    """A new job, claimed by ``owner``."""
    job_id = await h.add(max_attempts=max_attempts)
    assert await h.queue.claim_job(job_id, owner, lease) is not None
    return job_id


async def expire(h: Harness, job_id: UUID, *, lease: int = 10) -> None:
    """Claim (by A) with a short lease, let it run out and reap it."""
    assert await h.queue.claim_job(job_id, A, lease) is not None
    await h.advance(lease + 1)
    assert await h.queue.reap_expired(100) == 1


async def refused_everything(h: Harness, job_id: UUID, owner: str) -> None:
    """``owner`` owns nothing of this job: every owner-only call is refused."""
    assert await h.queue.heartbeat(job_id, owner, 60) is False
    assert await h.queue.complete(job_id, owner, RESULT) is False
    assert await h.queue.fail(job_id, owner, "no", "no", 5) is None
    assert await h.queue.release(job_id, owner) is False
    assert await h.queue.defer(job_id, owner, "no", "no", 5) is None


# claims

async def test_claim_by_id_takes_a_due_queued_job(harness: Harness) -> None:
    job_id = await harness.add(max_attempts=4)
    job = await harness.queue.claim_job(job_id, A, 60)
    assert job is not None
    assert (job.id, job.status, job.attempts, job.max_attempts, job.locked_by) == (
        job_id, JobStatus.RUNNING, 1, 4, A)
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.locked_by) == (JobStatus.RUNNING, 1, A)


async def test_claim_by_id_of_a_running_job_is_refused(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.claim_job(job_id, B, 60) is None
    assert await harness.queue.claim_job(job_id, A, 60) is None
    assert await harness.queue.claim_jobs(B, 10, 60) == []
    state = await harness.state(job_id)
    assert (state.locked_by, state.attempts) == (A, 1)


async def test_claim_by_id_of_an_unknown_job_is_refused(harness: Harness) -> None:
    assert await harness.queue.claim_job(uuid4(), A, 60) is None


async def test_a_job_not_yet_due_is_not_claimed_until_its_time(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.fail(job_id, A, "Try later.", "later", 30) == "queued"
    assert await harness.queue.claim_job(job_id, B, 60) is None
    assert await harness.queue.claim_jobs(B, 10, 60) == []
    await harness.advance(29)
    assert await harness.queue.claim_jobs(B, 10, 60) == []
    await harness.advance(2)
    job = await harness.queue.claim_job(job_id, B, 60)
    assert job is not None and (job.attempts, job.locked_by) == (2, B)


async def test_claim_jobs_takes_the_oldest_due_first_up_to_the_limit(harness: Harness) -> None:
    ids = []
    for _ in range(5):
        ids.append(await harness.add())
        await harness.advance(1)
    # The oldest is waiting for a retry: not due, so it is skipped, not waited for.
    assert await harness.queue.claim_job(ids[0], A, 60) is not None
    assert await harness.queue.fail(ids[0], A, "Try later.", "later", 300) == "queued"
    first = await harness.queue.claim_jobs(B, 2, 60)
    assert {job.id for job in first} == set(ids[1:3])
    assert all((job.locked_by, job.attempts) == (B, 1) for job in first)
    rest = await harness.queue.claim_jobs(B, 10, 60)
    assert {job.id for job in rest} == set(ids[3:])
    assert (await harness.state(ids[0])).status == JobStatus.QUEUED


async def test_claim_jobs_takes_turns_between_users(harness: Harness) -> None:
    burst = []
    for _ in range(5):
        burst.append(await harness.add(user="a"))
        await harness.advance(1)
    single = await harness.add(user="b")
    await harness.advance(1)
    order = [job.id for _ in range(4) for job in await harness.queue.claim_jobs(B, 1, 60)]
    # a's oldest first (nobody served yet, it is older), then b (a was just served), then a again
    assert order == [burst[0], single, burst[1], burst[2]]


async def test_a_batch_takes_each_users_oldest_first_then_the_oldest(harness: Harness) -> None:
    burst = []
    for _ in range(4):
        burst.append(await harness.add(user="a"))
        await harness.advance(1)
    others = [await harness.add(user="b"), await harness.add(user="c")]
    first = await harness.queue.claim_jobs(B, 4, 60)
    assert {job.id for job in first} == {burst[0], *others, burst[1]}
    assert {job.id for job in await harness.queue.claim_jobs(B, 10, 60)} == set(burst[2:])


async def test_a_batch_goes_round_by_round_between_users(harness: Harness) -> None:
    burst = []
    for _ in range(6):
        burst.append(await harness.add(user="a"))
        await harness.advance(1)
    assert [job.id for job in await harness.queue.claim_jobs(B, 1, 60)] == burst[:1]  # a served
    late = []
    for _ in range(3):  # each its own moment: jobs of one moment have no order between them
        late.append(await harness.add(user="b"))
        await harness.advance(1)
    # Two rounds: b (never served) then a, then b's and a's second jobs; not one of b and three of a.
    assert {job.id for job in await harness.queue.claim_jobs(B, 4, 60)} == {*late[:2], *burst[1:3]}
    assert {job.id for job in await harness.queue.claim_jobs(B, 2, 60)} == {late[2], burst[3]}


async def test_claim_jobs_with_no_room_claims_nothing(harness: Harness) -> None:
    job_id = await harness.add()
    assert await harness.queue.claim_jobs(A, 0, 60) == []
    assert await harness.queue.claim_jobs(A, -1, 60) == []
    assert (await harness.state(job_id)).status == JobStatus.QUEUED


# heartbeats and leases

async def test_heartbeat_extends_the_owners_lease(harness: Harness) -> None:
    job_id = await claimed(harness, lease=10)
    await harness.advance(8)
    assert await harness.queue.heartbeat(job_id, A, 10) is True
    await harness.advance(8)  # past the first lease, within the renewed one
    assert await harness.queue.reap_expired(100) == 0
    await harness.advance(3)
    assert await harness.queue.reap_expired(100) == 1
    assert (await harness.state(job_id)).status == JobStatus.QUEUED


async def test_heartbeat_by_anyone_but_the_owner_is_refused(harness: Harness) -> None:
    job_id = await claimed(harness, lease=10)
    assert await harness.queue.heartbeat(job_id, B, 60) is False
    assert await harness.queue.heartbeat(job_id, SIBLING, 60) is False
    await harness.advance(11)  # the stranger's heartbeat did not extend the lease
    assert await harness.queue.reap_expired(100) == 1


async def test_an_expired_lease_holds_until_it_is_reaped(harness: Harness) -> None:
    # Expiry takes effect when the sweeper reaps: until then nobody else can claim the job, and
    # its owner may still renew (a late heartbeat that wins the race keeps the job).
    job_id = await claimed(harness, lease=10)
    await harness.advance(30)
    assert await harness.queue.claim_job(job_id, B, 60) is None
    assert await harness.queue.heartbeat(job_id, A, 60) is True
    assert await harness.queue.reap_expired(100) == 0
    assert (await harness.state(job_id)).locked_by == A


async def test_after_its_lease_is_reaped_the_old_owner_can_do_nothing(harness: Harness) -> None:
    job_id = await harness.add()
    await expire(harness, job_id)
    await refused_everything(harness, job_id, A)
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.locked_by, state.refunds) == (
        JobStatus.QUEUED, 1, None, 0)


async def test_the_owner_of_an_earlier_attempt_owns_nothing(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.fail(job_id, A, "Try again.", "again", 0) == "queued"
    assert await harness.queue.claim_job(job_id, B, 60) is not None
    await refused_everything(harness, job_id, A)
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.locked_by) == (JobStatus.RUNNING, 2, B)


async def test_a_queued_job_is_owned_by_nobody(harness: Harness) -> None:
    job_id = await harness.add()
    await refused_everything(harness, job_id, A)
    assert (await harness.state(job_id)).status == JobStatus.QUEUED


# reaping

async def test_reap_requeues_an_expired_job_with_attempts_left(harness: Harness) -> None:
    job_id = await harness.add()
    await expire(harness, job_id)
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.locked_by, state.error_code, state.refunds) == (
        JobStatus.QUEUED, 1, None, "lease_expired", 0)
    assert state.error
    job = await harness.queue.claim_job(job_id, B, 60)  # due at once
    assert job is not None and (job.attempts, job.locked_by) == (2, B)


async def test_reap_leaves_live_leases_and_queued_jobs(harness: Harness) -> None:
    running = await claimed(harness, lease=60)
    queued = await harness.add()
    await harness.advance(59)
    assert await harness.queue.reap_expired(100) == 0
    assert (await harness.state(running)).status == JobStatus.RUNNING
    assert (await harness.state(queued)).status == JobStatus.QUEUED


async def test_reap_takes_the_longest_expired_first_up_to_the_limit(harness: Harness) -> None:
    ids = [await claimed(harness, lease=lease) for lease in (30, 10, 20)]
    await harness.advance(40)
    assert await harness.queue.reap_expired(0) == 0
    assert await harness.queue.reap_expired(-5) == 0
    assert await harness.queue.reap_expired(2) == 2
    statuses = [(await harness.state(job_id)).status for job_id in ids]
    assert statuses == [JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.QUEUED]
    assert await harness.queue.reap_expired(2) == 1
    assert await harness.queue.reap_expired(2) == 0


async def test_reap_at_the_last_attempt_fails_and_refunds_once(harness: Harness) -> None:
    job_id = await harness.add(max_attempts=2)
    await expire(harness, job_id)
    assert (await harness.state(job_id)).status == JobStatus.QUEUED
    await expire(harness, job_id)
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.error_code, state.refunds) == (
        JobStatus.FAILED, 2, "lease_expired", 1)
    assert state.error
    await harness.advance(3600)
    assert await harness.queue.reap_expired(100) == 0
    assert await harness.queue.claim_job(job_id, B, 60) is None
    assert (await harness.state(job_id)).refunds == 1


async def test_fail_after_the_last_lease_was_reaped_refunds_nothing_more(harness: Harness) -> None:
    job_id = await harness.add(max_attempts=1)
    await expire(harness, job_id)
    # The job already failed for good: the late owner hears "failed", and no second refund.
    assert await harness.queue.fail(job_id, A, "It broke.", "boom", None) == "failed"
    assert await harness.queue.complete(job_id, A, RESULT) is False
    assert await harness.queue.heartbeat(job_id, A, 60) is False
    assert await harness.queue.release(job_id, A) is False
    state = await harness.state(job_id)
    assert (state.status, state.error_code, state.refunds, state.assets) == (
        JobStatus.FAILED, "lease_expired", 1, [])


# failing

async def test_fail_with_a_delay_and_attempts_left_requeues_later(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.fail(job_id, A, "Busy, try later.", "busy", 30) == "queued"
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.locked_by, state.refunds) == (
        JobStatus.QUEUED, 1, None, 0)
    assert (state.error, state.error_code) == ("Busy, try later.", "busy")


async def test_fail_with_a_negative_delay_is_due_at_once(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.fail(job_id, A, "Again.", "again", -30) == "queued"
    assert await harness.queue.claim_job(job_id, B, 60) is not None


async def test_fail_without_a_delay_is_final_and_refunds_exactly_once(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.fail(job_id, A, "Refused content.", "refused", None) == "failed"
    assert await harness.queue.fail(job_id, A, "Refused content.", "refused", None) == "failed"
    assert await harness.queue.fail(job_id, A, "Again.", "again", 5) == "failed"
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.refunds) == (JobStatus.FAILED, 1, 1)
    assert (state.error, state.error_code) == ("Refused content.", "refused")
    assert await harness.queue.claim_job(job_id, B, 60) is None


async def test_fail_at_the_last_attempt_is_final_even_with_a_delay(harness: Harness) -> None:
    job_id = await claimed(harness, max_attempts=2)
    assert await harness.queue.fail(job_id, A, "Busy.", "busy", 0) == "queued"
    assert await harness.queue.claim_job(job_id, B, 60) is not None
    assert await harness.queue.fail(job_id, B, "Busy.", "busy", 10) == "failed"
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.refunds) == (JobStatus.FAILED, 2, 1)


async def test_fail_by_a_stranger_changes_nothing(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.fail(job_id, B, "No.", "no", None) is None
    assert await harness.queue.fail(job_id, SIBLING, "No.", "no", None) is None
    state = await harness.state(job_id)
    assert (state.status, state.locked_by, state.error, state.refunds) == (
        JobStatus.RUNNING, A, None, 0)


# deferring (a 429: Gemini's quota had no room; issue 18)

async def test_defer_requeues_later_without_counting_the_attempt(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.defer(job_id, A, "Gemini is rate limiting us", "rate_limited", 30) == "queued"
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.deferrals, state.locked_by, state.refunds) == (
        JobStatus.QUEUED, 0, 1, None, 0)
    assert (state.error, state.error_code) == ("Gemini is rate limiting us", "rate_limited")
    assert await harness.queue.claim_jobs(B, 10, 60) == []
    await harness.advance(31)
    job = await harness.queue.claim_job(job_id, B, 60)
    assert job is not None and job.attempts == 1


async def test_deferrals_never_use_up_attempts(harness: Harness) -> None:
    job_id = await claimed(harness, max_attempts=1)
    for _ in range(5):
        assert await harness.queue.defer(job_id, A, "Later.", "rate_limited", 0) == "queued"
        assert await harness.queue.claim_job(job_id, A, 60) is not None
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.deferrals) == (JobStatus.RUNNING, 1, 5)


async def test_defer_past_the_budget_fails_and_refunds_exactly_once(harness: Harness) -> None:
    job_id = await claimed(harness)
    for _ in range(MAX_DEFERRALS):
        assert await harness.queue.defer(job_id, A, "Later.", "rate_limited", 0) == "queued"
        assert await harness.queue.claim_job(job_id, A, 60) is not None
    assert await harness.queue.defer(job_id, A, "Still limited.", "rate_limited", 0) == "failed"
    assert await harness.queue.defer(job_id, A, "Still limited.", "rate_limited", 0) == "failed"
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.deferrals, state.refunds) == (
        JobStatus.FAILED, 1, MAX_DEFERRALS, 1)
    assert (state.error, state.error_code) == ("Still limited.", "rate_limited")
    assert await harness.queue.claim_job(job_id, B, 60) is None


async def test_defer_by_a_stranger_or_of_a_queued_job_changes_nothing(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.defer(job_id, B, "No.", "rate_limited", 5) is None
    assert await harness.queue.defer(job_id, SIBLING, "No.", "rate_limited", 5) is None
    state = await harness.state(job_id)
    assert (state.status, state.locked_by, state.deferrals) == (JobStatus.RUNNING, A, 0)
    queued = await harness.add()
    assert await harness.queue.defer(queued, A, "No.", "rate_limited", 5) is None
    assert (await harness.state(queued)).deferrals == 0


# releasing

async def test_release_gives_the_job_back_without_counting_the_attempt(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.release(job_id, A) is True
    state = await harness.state(job_id)
    assert (state.status, state.attempts, state.locked_by, state.refunds) == (
        JobStatus.QUEUED, 0, None, 0)
    job = await harness.queue.claim_job(job_id, B, 60)  # due at once
    assert job is not None and job.attempts == 1


async def test_release_is_for_the_owner_and_once(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.release(job_id, B) is False
    assert await harness.queue.release(job_id, SIBLING) is False
    assert (await harness.state(job_id)).status == JobStatus.RUNNING
    assert await harness.queue.release(job_id, A) is True
    assert await harness.queue.release(job_id, A) is False


# completing

async def test_complete_records_the_result_and_its_assets(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.complete(job_id, A, RESULT) is True
    state = await harness.state(job_id)
    assert (state.status, state.model, state.assets, state.refunds) == (
        JobStatus.SUCCEEDED, "m-1", ["u/j/edge.png", "u/j/page.pdf"], 0)


async def test_complete_twice_answers_true_and_records_once(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.complete(job_id, A, RESULT) is True
    assert await harness.queue.complete(job_id, A, RESULT) is True
    state = await harness.state(job_id)
    assert (state.status, state.assets) == (JobStatus.SUCCEEDED, ["u/j/edge.png", "u/j/page.pdf"])


async def test_complete_clears_the_error_of_an_earlier_attempt(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.fail(job_id, A, "Busy.", "busy", 0) == "queued"
    assert await harness.queue.claim_job(job_id, A, 60) is not None
    assert await harness.queue.complete(job_id, A, RESULT) is True
    state = await harness.state(job_id)
    assert (state.status, state.error, state.error_code) == (JobStatus.SUCCEEDED, None, None)


async def test_a_finished_job_takes_no_other_outcome(harness: Harness) -> None:
    done, failed = await claimed(harness), await claimed(harness)
    assert await harness.queue.complete(done, A, RESULT) is True
    assert await harness.queue.fail(done, A, "Late.", "late", None) is None
    assert await harness.queue.release(done, A) is False
    assert await harness.queue.heartbeat(done, A, 60) is False
    assert await harness.queue.fail(failed, A, "Refused.", "refused", None) == "failed"
    assert await harness.queue.complete(failed, A, RESULT) is False
    assert (await harness.state(done)).refunds == 0
    state = await harness.state(failed)
    assert (state.status, state.assets, state.refunds) == (JobStatus.FAILED, [], 1)
    await harness.advance(3600)
    assert await harness.queue.reap_expired(100) == 0


async def test_complete_by_anyone_but_the_owner_is_refused(harness: Harness) -> None:
    job_id = await claimed(harness)
    assert await harness.queue.complete(job_id, B, RESULT) is False
    assert await harness.queue.complete(job_id, SIBLING, RESULT) is False
    state = await harness.state(job_id)
    assert (state.status, state.assets) == (JobStatus.RUNNING, [])
