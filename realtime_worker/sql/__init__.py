"""SQL files of the database contract, loaded once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """The numbered migrations in the order they apply (``NNNN_name.sql``)."""
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version, rest.removesuffix(".sql"), entry.read_text("utf-8")))
    return tuple(sorted(found, key=lambda m: m.version))


def full_script() -> str:
    """Every migration, concatenated, as `realtime-worker sql` prints it."""
    parts = [f"-- realtime-worker migration {m.version}_{m.name}\n{m.sql}" for m in migrations()]
    return "\n".join(parts)
