"""Write one benchmark's section into docs/benchmarks.md, replacing its previous run."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Each section is written by its script in `bench/` (run `make bench` or the script named in
the section); numbers are from one run on the machine named there. Ratios to a baseline
measured in the same run are the numbers to compare across machines.
"""


def machine() -> str:
    """The machine in one line: OS, CPU model, cores, memory, Python."""
    cpu, memory = "unknown CPU", float("nan")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, "
            f"{memory:.0f} GiB RAM, Python {platform.python_version()}")


def record_section(name: str, title: str, command: str, body: str, path: Path = DOC) -> None:
    """Replace (or append) the section ``name`` with a dated, machine-stamped ``body``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    section = (f"{start}\n## {title}\n\n`{command}` — {datetime.now(UTC):%Y-%m-%d}, {machine()}.\n\n"
               f"{body.strip()}\n{end}\n")
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
