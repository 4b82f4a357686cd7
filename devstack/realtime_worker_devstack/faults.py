"""Fault injection for the devstack: set at start or at run time over the admin endpoint.

One seeded random source makes a fault sequence reproducible.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Faults:
    """Every knob is off by default. Fractions are probabilities in [0, 1]."""

    seed: int | None = None
    # Realtime
    realtime_drop_fraction: float = 0.0
    realtime_delay_seconds: float = 0.0
    realtime_refuse_joins: bool = False
    realtime_refuse_connections: bool = False  # the websocket endpoint answers 503
    # "immediate": every change goes out as its NOTIFY arrives; "server": postgres_changes wait for
    # the modelled replication poller (100 ms, 500 ms idle, <= 100 a poll), Broadcast is streamed
    realtime_timing: str = "immediate"
    # REST and Storage
    rest_error_fraction: float = 0.0
    rest_error_status: int = 503
    storage_error_fraction: float = 0.0
    storage_error_status: int = 503
    storage_error_path_suffix: str = ""  # when set, only requests whose path ends with it fail
    storage_drip_fraction: float = 0.0  # downloads (GET) sent one byte every storage_drip_seconds
    storage_drip_seconds: float = 5.0
    # Gemini
    gemini_429_fraction: float = 0.0
    gemini_retry_delay_seconds: float = 7.0
    gemini_429_per_day: bool = False  # 429s name a per-day quota (RPD) instead of per-minute
    gemini_500_fraction: float = 0.0
    gemini_503_fraction: float = 0.0
    gemini_safety_fraction: float = 0.0
    gemini_safety_finish_reason: str = "IMAGE_SAFETY"  # finishReason of a refused candidate
    gemini_prompt_block_fraction: float = 0.0
    gemini_block_reason: str = "PROHIBITED_CONTENT"  # promptFeedback.blockReason of a block
    gemini_no_image_fraction: float = 0.0
    gemini_no_image_finish_reason: str = "STOP"  # finishReason of an answer without an image
    gemini_slow_fraction: float = 0.0
    gemini_slow_seconds: float = 300.0
    gemini_hang_fraction: float = 0.0  # calls never answered (until the client gives up)
    gemini_latency_seconds: float = 0.0
    gemini_status: int | None = None  # every Gemini call answers this status (e.g. 401, 404)
    # A quota per API key, as the real API enforces one per project (0: none): generateContent
    # requests per minute (sliding window) and in flight at once; over it, 429 with RetryInfo.
    gemini_quota_per_minute: int = 0
    gemini_quota_concurrent: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)

    def chance(self, fraction: float) -> bool:
        """True with the given probability, drawn from the seeded source."""
        return fraction > 0 and self.rng.random() < fraction

    def update(self, changes: dict[str, Any]) -> None:
        """Apply changes from the admin endpoint; unknown names are refused."""
        known = {f.name for f in fields(self) if f.name != "rng"}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            setattr(self, name, value)
        if "seed" in changes:
            self.rng.seed(self.seed)

    def reset(self) -> None:
        self.update({f.name: f.default for f in fields(self) if f.name != "rng"})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("rng", None)
        return data
