"""Result files of the campaigns: one CSV per campaign and a README with one section per campaign."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import re
from pathlib import Path

README_HEADER = """# Reliability campaigns

Each section below is the latest run of one campaign of `python -m flashbench.campaigns`;
its rows are in `<campaign>.csv` next to this file. Running a campaign again replaces
its section. In the crash, integrity and storage campaigns each trial draws from its own
stream seeded by `--seed` and the trial number, so `--trials N` repeats the first N
trials of a longer run.
"""

_FRACTION = re.compile(r"(\d+)/(\d+)")


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] | None = None) -> None:
    """Write ``rows`` with ``columns`` (default: every key, in order of first appearance)."""
    if columns is None:
        columns = tuple(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)


def summary_passed(summary: str) -> bool:
    """Return whether a summary line reports success: ``N/N`` for counts, ``PASS`` for a limit."""
    if summary.endswith("MISS"):
        return False
    fractions = _FRACTION.findall(summary)
    return all(good == total for good, total in fractions) and (bool(fractions) or summary.endswith("PASS"))


def machine() -> str:
    """Describe this machine: usable cores, CPU model, memory, OS and Python version."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cores} cores, {_cpu_model()}, {memory_gib:.1f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def readme_section(name: str, description: str, summary: str, command: str, wall_s: float, csv_name: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## {name}\n\n{description.strip()}\n\n"
        f"- result: `{summary}`\n"
        f"- command: `{command}`\n"
        f"- date: {now}\n"
        f"- machine: {machine()}\n"
        f"- wall time: {wall_s:.1f} s\n"
        f"- rows: [{csv_name}]({csv_name})\n"
    )


def update_readme(path: Path, name: str, section: str) -> None:
    """Replace the section ``## name`` of the README at ``path``, or append it. A missing README is created."""
    text = path.read_text() if path.exists() else README_HEADER
    parts = re.split(r"(?m)^(?=## )", text)
    header, sections = parts[0], parts[1:]
    heading = f"## {name}\n"
    found = any(part.startswith(heading) for part in sections)
    sections = [section if part.startswith(heading) else part for part in sections]
    if not found:
        sections.append(section)
    body = "\n".join(part.rstrip("\n") + "\n" for part in sections)
    path.write_text(header.rstrip("\n") + "\n\n" + body)
