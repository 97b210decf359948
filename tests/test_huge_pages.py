"""The service's workers put their heap on huge pages (serving/workarounds/huge_pages.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from serving.service import NextBest
from serving.workarounds import huge_pages
from serving.workarounds.huge_pages import WORKER_ENVS, huge_page_share, worker_envs


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
                      "Rss:              617940 kB\nAnonymous:        417796 kB\n"
                      "AnonHugePages:    364544 kB\n")
    assert huge_page_share(rollup) == (364544 * 1024, 417796 * 1024)


def test_without_a_rollup_the_share_is_unknown(tmp_path: Path):
    assert huge_page_share(tmp_path / "missing") is None


@pytest.mark.parametrize(("malloc", "on_huge", "says"), [
    (None, 900, "PYTHONMALLOC is unset"),
    ("malloc", 100, "/sys/kernel/mm/transparent_hugepage/enabled"),
])
def test_a_worker_that_wanted_huge_pages_and_got_few_says_why(monkeypatch, caplog, malloc,
                                                               on_huge, says):
    monkeypatch.setattr(huge_pages, "huge_page_share", lambda: (on_huge << 20, 1000 << 20))
    if malloc is None:
        monkeypatch.delenv("PYTHONMALLOC", raising=False)
    else:
        monkeypatch.setenv("PYTHONMALLOC", malloc)
    with caplog.at_level(logging.INFO, logger="nextbest.serving"):
        huge_pages.log_huge_pages(wanted=True)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"{on_huge} of 1000 MiB of heap on huge pages" in record.getMessage()
    assert says in record.getMessage()


def test_a_worker_with_its_heap_on_huge_pages_just_says_how_much(monkeypatch, caplog):
    monkeypatch.setattr(huge_pages, "huge_page_share", lambda: (900 << 20, 1000 << 20))
    monkeypatch.setenv("PYTHONMALLOC", "malloc")
    with caplog.at_level(logging.INFO, logger="nextbest.serving"):
        huge_pages.log_huge_pages(wanted=True)
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == "900 of 1000 MiB of heap on huge pages"
