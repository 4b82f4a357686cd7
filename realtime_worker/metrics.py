"""Prometheus metrics of one worker (a registry per worker, so tests can run several)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    """Every counter and gauge the worker exposes on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.claimed = Counter("worker_jobs_claimed", "Jobs claimed, by how they were found",
                               ["source"], registry=r)
        self.succeeded = Counter("worker_jobs_succeeded", "Jobs completed", registry=r)
        self.failed = Counter("worker_jobs_failed", "Jobs failed for good, by error code",
                              ["code"], registry=r)
        self.retried = Counter("worker_jobs_retried", "Jobs requeued for a retry, by error code",
                               ["code"], registry=r)
        self.deferred = Counter(
            "worker_jobs_deferred",
            "Jobs sent back to the queue because Gemini's quota had no room, by error code",
            ["code"], registry=r)
        self.released = Counter("worker_jobs_released", "Jobs given back unfinished, by reason",
                                ["reason"], registry=r)
        self.config_pauses = Counter(
            "worker_config_pauses",
            "Claiming paused because Gemini refused the worker's configuration, by error code",
            ["code"], registry=r)
        self.timed_out = Counter("worker_jobs_timed_out",
                                 "Jobs stopped at JOB_TIMEOUT_SECONDS (then retried or failed)",
                                 registry=r)
        self.in_flight = Gauge("worker_jobs_in_flight", "Jobs running now", registry=r)
        self.duration = Histogram("worker_job_duration_seconds", "Claim to final state",
                                  buckets=_DURATION_BUCKETS, registry=r)
        self.pickup = Histogram("worker_pickup_latency_seconds", "Claim time minus created_at",
                                buckets=_LATENCY_BUCKETS, registry=r)
        self.realtime_connected = Gauge("worker_realtime_connected",
                                        "1 while subscribed to jobs inserts", registry=r)
        self.events = Counter("worker_realtime_events", "Realtime INSERT events received",
                              registry=r)
        self.hints_dropped = Counter("worker_hints_dropped", "Wake-ups dropped (buffer full)",
                                     registry=r)
        self.resubscribes = Counter("worker_realtime_resubscribes",
                                    "Realtime client rebuilds by the supervisor", registry=r)
        self.last_sweep = Gauge("worker_last_sweep_timestamp_seconds",
                                "Unix time of the last sweep", registry=r)
        self.reaped = Counter("worker_leases_reaped", "Expired leases reaped by this worker",
                              registry=r)
        self.db_requests = Counter("worker_db_requests", "Database contract calls, by function",
                                   ["function"], registry=r)
        self.queue_due = Gauge("worker_queue_due_jobs",
                               "Queued jobs due now, fleet-wide (read when /metrics is scraped)",
                               registry=r)
        self.queue_oldest_age = Gauge(
            "worker_queue_oldest_due_age_seconds",
            "How long the oldest due queued job has waited, fleet-wide (read when scraped)",
            registry=r)
        self.generation = Histogram("worker_generation_seconds", "Image generation latency",
                                    buckets=_DURATION_BUCKETS, registry=r)

    def mark_sweep(self) -> None:
        self.last_sweep.set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)
