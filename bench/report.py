"""Results of one ``python -m bench`` run: sections, targets, machine facts, and BENCHMARKS.md.

The report carries its own data as JSON in a trailing HTML comment, so ``--update`` can rerun some
scenarios (say, pickup latency after the machine was busy) and replace just their sections and
targets, saying so in the header.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.harness import load_average

PACKAGES = ("realtime", "supabase", "websockets", "aiohttp", "httpx", "asyncpg", "anyio",
            "google-genai", "pillow", "fpdf2", "pgserver", "procrastinate", "psycopg", "pgqueuer")


@dataclass(frozen=True)
class Target:
    """One target from the issues, with what this run measured."""

    issue: int
    what: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    load: str = ""

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.lines += table(headers, rows)

    def text(self, *paragraphs: str) -> None:
        for paragraph in paragraphs:
            self.lines += ["", paragraph]

    def block(self, text: str) -> None:
        self.lines += ["", "```", *text.rstrip().splitlines(), "```"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return out


@dataclass
class Results:
    command: str
    quick: bool
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    load_start: str = field(default_factory=load_average)
    postgres: str = "?"
    server: str = "?"
    sections: list[Section] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    load_end: str = ""
    reruns: list[str] = field(default_factory=list)
    # Read when the run starts: a report written again elsewhere keeps the measuring machine's.
    machine: dict[str, str] = field(default_factory=lambda: machine_facts())

    def section(self, title: str) -> Section:
        section = Section(title, load=load_average())
        self.sections.append(section)
        return section

    def target(self, issue: int, what: str, target: str, measured: str, met: bool | None) -> None:
        self.targets.append(Target(issue, what, target, measured, met))


# --- machine facts -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "?"


def package_versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def machine_facts() -> dict[str, str]:
    """This machine, as a report's facts table shows it."""
    return {"CPU": f"{os.cpu_count()} cores, {cpu_model()}", "memory": memory_gib(),
            "OS": platform.platform(), "Python": sys.version.split()[0],
            "packages": package_versions()}


def machine_rows(results: Results) -> list[tuple[str, str]]:
    m = results.machine
    return [
        ("date (UTC)", results.started.strftime("%Y-%m-%d %H:%M")),
        *((name, m[name]) for name in ("CPU", "memory", "OS", "Python")),
        ("Postgres", f"{results.postgres} ({results.server})"),
        ("packages", m["packages"]),
        ("load average (1/5/15 min) at start → end", f"{results.load_start} → {results.load_end}"),
    ]


def written_facts(text: str) -> dict[str, str]:
    """The machine facts of a report written before they were kept in its data: its table's."""
    rows = dict(re.findall(r"^\| (CPU|memory|OS|Python|packages) \| (.*) \|$", text, re.M))
    return rows if len(rows) == 5 else machine_facts()


# --- output --------------------------------------------------------------------------------------


def target_rows(results: Results) -> list[tuple[object, ...]]:
    return [(f"#{t.issue}", t.what, t.target, t.measured, t.verdict) for t in results.targets]


ANALYSIS = Path(__file__).with_name("analysis.md")


def markdown(results: Results) -> str:
    mode = " (quick run: smaller samples)" if results.quick else ""
    out = ["# Benchmarks", "",
           f"Generated by `{results.command}`{mode} — every figure below comes from that one run, "
           "on one machine, against one Postgres server. Nothing here is asserted by the test suite.",
           *(f"\nRerun: {rerun}" for rerun in results.reruns),
           "", "## Machine", *table(("fact", "value"), machine_rows(results)),
           "", "## Targets (issues 2–7)", *table(("issue", "what", "target", "measured", "verdict"),
                                                 target_rows(results))]
    if results.failures:
        out += ["", "## Scenarios that failed in this run", ""]
        out += [f"- {failure}" for failure in results.failures]
    for section in results.sections:
        out += ["", f"## {section.title}", "", f"Load average (1/5/15 min) when it started: {section.load}."]
        out += section.lines
    if ANALYSIS.exists():  # hand-written: what the figures mean, and the chaos soak's results
        out += ["", ANALYSIS.read_text("utf-8").strip()]
    data = json.dumps(asdict(results), default=str).replace("--", "\\u002d\\u002d")
    return "\n".join(out) + f"\n\n<!-- bench-data {data} -->\n"


def write(results: Results, path: Path) -> None:
    path.write_text(markdown(results))


def load(path: Path) -> Results:
    """The results a report was written from (its trailing ``bench-data`` comment)."""
    text = path.read_text()
    found = re.search(r"<!-- bench-data (.*) -->", text)
    if found is None:
        raise ValueError(f"{path} carries no bench data to update")
    data = json.loads(found.group(1))
    data.setdefault("machine", written_facts(text))
    data["started"] = datetime.fromisoformat(data["started"])
    data["sections"] = [Section(**s) for s in data["sections"]]
    data["targets"] = [Target(**t) for t in data["targets"]]
    return Results(**data)


def merge(old: Results, new: Results, ran: list[str] | None = None) -> Results:
    """``old`` with the sections and targets ``new`` measured again replaced by the new ones; a
    failure ``old`` recorded for a scenario that ``ran`` again is gone with it."""
    sections = {s.title: s for s in new.sections}
    targets = {(t.issue, t.what): t for t in new.targets}
    kept_titles = {s.title for s in old.sections}
    kept_keys = {(t.issue, t.what) for t in old.targets}
    old.sections = [sections.get(s.title, s) for s in old.sections]
    old.sections += [s for s in new.sections if s.title not in kept_titles]
    old.targets = [targets.get((t.issue, t.what), t) for t in old.targets]
    old.targets += [t for t in new.targets if (t.issue, t.what) not in kept_keys]
    again = tuple(f"{name}: " for name in ran or [])
    old.failures = [f for f in old.failures if not f.startswith(again)] + new.failures
    rerun = ", ".join(s.title.split(":")[0] for s in new.sections) or "nothing"
    old.reruns.append(f"{rerun} measured again on {new.started:%Y-%m-%d %H:%M} UTC by `{new.command}` "
                      f"(load average {new.load_start} → {new.load_end}); those sections and targets "
                      "replace the first run's.")
    return old
