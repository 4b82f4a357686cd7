"""The one exception hierarchy of the worker.

Adapters translate library errors at their boundary (``raise ... from``); job errors say whether
a retry could help and what a user may read.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base class of every error raised on purpose by realtime-worker."""


class ConfigError(WorkerError):
    """A setting is missing or invalid; the message names the environment variable."""


class AdapterError(WorkerError):
    """An outside system (Supabase, Storage, Gemini, Postgres) failed in a way we did not expect."""


class QueueError(AdapterError):
    """A call of the database contract failed (network, PostgREST, SQL)."""


class StorageError(AdapterError):
    """A Storage download or upload failed."""


class JobError(WorkerError):
    """A job could not be done. ``user_message`` is safe to store in ``jobs.error``."""

    retryable: bool = False

    def __init__(
        self,
        user_message: str,
        *,
        code: str,
        retry_after: float | None = None,
        max_retries: int | None = None,
    ) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.code = code
        self.retry_after = retry_after
        self.max_retries = max_retries


class PermanentJobError(JobError):
    """Retrying cannot help: bad input, refused content, a configuration problem."""

    retryable = False


class RetryableJobError(JobError):
    """A later attempt may succeed: rate limits, outages, time-outs, a non-deterministic miss.

    ``retry_after`` is the server's requested delay in seconds, when it gave one;
    ``max_retries`` caps how many attempts this class of error may cause (None: the job's own
    ``max_attempts`` decides).
    """

    retryable = True


class ConfigurationJobError(PermanentJobError):
    """The job failed because the worker is misconfigured (bad key, retired model)."""


class QuotaJobError(RetryableJobError):
    """Gemini's quota (or the fleet's budget of it) has no room now: not the job's fault.

    The job is deferred (``worker_defer_job``): back to the queue after ``retry_after`` seconds,
    the attempt not counted, within the job's own budget of deferrals.
    """
