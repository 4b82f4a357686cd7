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
    return _folder("migrations")


@cache
def hardening() -> tuple[Migration, ...]:
    """The opt-in hardening migrations (``HNNN_name.sql``), applied after every migration."""
    return _folder("hardening")


def _folder(name: str) -> tuple[Migration, ...]:
    folder = resources.files(__package__).joinpath(name)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version, rest.removesuffix(".sql"), entry.read_text("utf-8")))
    return tuple(sorted(found, key=lambda m: m.version))


@cache
def named_queries(package: str, filename: str) -> dict[str, str]:
    """The queries of a ``.sql`` file in ``package``, each after a ``-- name: NAME`` line."""
    text = resources.files(package).joinpath(filename).read_text("utf-8")
    found: dict[str, str] = {}
    for chunk in text.split("-- name: ")[1:]:
        name, _, body = chunk.partition("\n")
        found[name.strip()] = body.strip().rstrip(";")
    return found


def queries() -> dict[str, str]:
    """The named queries of the command-line tools (``queries.sql``)."""
    return named_queries(__package__, "queries.sql")


def query(name: str) -> str:
    return queries()[name]


def chosen(*, harden: bool = False) -> tuple[Migration, ...]:
    """The migrations to apply: every numbered one, then the hardening ones with ``harden``."""
    return migrations() + (hardening() if harden else ())


def full_script(*, harden: bool = False) -> str:
    """Every migration (and the hardening with ``harden``), as `realtime-worker sql` prints it."""
    parts = [f"-- realtime-worker migration {m.version}_{m.name}\n{m.sql}"
             for m in chosen(harden=harden)]
    return "\n".join(parts)
