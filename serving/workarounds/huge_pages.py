"""Workers whose heap lies on huge pages: the settings that put it there, and how much did.

A recommend request reads a few hundred objects scattered over a worker's gigabytes of loaded
state: the customer's entries in dictionaries of a million, their behaviour, the catalog items
it names. On 4 KiB pages almost every such read also misses the TLB, and the page-table walk
that follows misses the cache as well. On 2 MiB pages the same reads cost less: measured in one
run on the service benchmark (two servers of the same code, requests alternating between them),
recommend's cost over the no-op fell by 40 µs, from 330 to 282 µs, at 100k items and 1M
customers; the no-op's own p50 stayed the same.

Linux gives a process transparent huge pages where the process asks for them (``madvise``, the
default in most distributions). numpy already asks for its large arrays. Python's small objects
live in pymalloc's 1 MiB arenas, which Python maps itself and never marks. Two environment
variables, read as a worker process starts, change that: ``PYTHONMALLOC=malloc`` sends Python's
allocations to the C library's allocator, and glibc's ``glibc.malloc.hugetlb=1`` tunable makes
that allocator mark its memory for huge pages (glibc 2.35 and later; other C libraries ignore
it). BentoML sets a service's ``envs`` in every worker it starts and in a Bento's container; a
value already in the environment is kept. The worker then says in its log how much of its
memory is on huge pages (``huge_page_share``), as a warning when under a quarter of it is (none
is where the kernel has them off, ``never``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("nextbest.serving")

WORKER_ENVS = {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def worker_envs(enabled: bool) -> list[dict[str, str]]:
    """The ``envs`` of ``@bentoml.service``: set only when the workers start (``runtime``), so
    building a Bento's image runs as usual."""
    if not enabled:
        return []
    return [{"name": name, "value": value, "stage": "runtime"}
            for name, value in WORKER_ENVS.items()]


def huge_page_share(smaps_rollup: Path = Path("/proc/self/smaps_rollup")) -> tuple[int, int] | None:
    """(bytes on transparent huge pages, bytes of anonymous memory: the heap, which could be)
    of this process, or None where the kernel does not say (not Linux, or no ``smaps_rollup``)."""
    try:
        lines = smaps_rollup.read_text().splitlines()
    except OSError:
        return None
    sizes = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in ("Anonymous", "AnonHugePages"):
            sizes[name] = int(rest.split()[0]) * 1024
    if "Anonymous" not in sizes:
        return None
    return sizes.get("AnonHugePages", 0), sizes["Anonymous"]


def log_huge_pages(wanted: bool) -> None:
    """Say how much of the worker's heap is on huge pages: a warning when they were wanted and
    under a quarter of it got them (so that BentoML's default log level shows it), with why."""
    share = huge_page_share()
    if share is None:
        return
    on_huge, heap = share
    said = f"{on_huge >> 20} of {heap >> 20} MiB of heap on huge pages"
    allocator = os.environ.get("PYTHONMALLOC")
    if wanted and allocator != WORKER_ENVS["PYTHONMALLOC"]:
        log.warning("%s: Python's objects are not, as PYTHONMALLOC is %s in this worker (it is "
                    "set to malloc unless the environment sets it otherwise)", said,
                    "unset" if allocator is None else repr(allocator))
    elif wanted and on_huge < heap // 4:
        log.warning("%s: the kernel gives few or none (see "
                    "/sys/kernel/mm/transparent_hugepage/enabled; 'never' turns them off)", said)
    else:
        log.info(said)
