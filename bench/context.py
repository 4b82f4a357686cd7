"""What a scenario gets: the run's folder and Postgres, the devstack, the size of the run, results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.harness import Stack
from bench.report import Results


@dataclass
class Context:
    folder: Path
    admin_dsn: str
    quick: bool
    results: Results
    stack_: Stack | None = None

    @property
    def stack(self) -> Stack:
        if self.stack_ is None:
            raise RuntimeError("this scenario needs the devstack")
        return self.stack_

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full
