"""The service's workers put their heap on huge pages (serving/huge_pages.py)."""

from __future__ import annotations

from pathlib import Path

from serving.huge_pages import WORKER_ENVS, huge_page_share, worker_envs
from serving.service import NextBest


def test_the_workers_get_pythons_allocations_through_a_malloc_marked_for_huge_pages():
    envs = {e["name"]: e for e in worker_envs(True)}
    assert envs["PYTHONMALLOC"]["value"] == "malloc"
    assert envs["GLIBC_TUNABLES"]["value"] == "glibc.malloc.hugetlb=1"
    assert {e["stage"] for e in envs.values()} == {"runtime"}  # not while a Bento's image builds


def test_turned_off_the_workers_get_nothing_set():
    assert worker_envs(False) == []


def test_the_service_definition_hands_them_to_bentoml():
    assert {(e.name, e.value) for e in NextBest.envs} == set(WORKER_ENVS.items())


def test_the_share_on_huge_pages_is_read_from_the_kernels_rollup(tmp_path: Path):
    rollup = tmp_path / "smaps_rollup"
    rollup.write_text("00400000-7ffd0000 ---p 00000000 00:00 0  [rollup]\n"
                      "Rss:             3213312 kB\nPss:             3200000 kB\n"
                      "AnonHugePages:   1939456 kB\n")
    assert huge_page_share(rollup) == (1939456 * 1024, 3213312 * 1024)


def test_without_a_rollup_the_share_is_unknown(tmp_path: Path):
    assert huge_page_share(tmp_path / "missing") is None
