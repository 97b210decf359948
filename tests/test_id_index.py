"""Looking ids up by binary search gives what a dict would, for any ids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.id_index import IdIndex

ids = st.text(st.characters(blacklist_characters="\0"), max_size=12)


@given(st.lists(ids, unique=True, max_size=40), st.lists(ids, max_size=20))
def test_every_id_is_found_at_its_position_and_no_other_id_is(known, asked):
    index = IdIndex(known)
    truth = {id_: at for at, id_ in enumerate(known)}
    for id_ in [*known, *asked]:
        assert index.position(id_) == truth.get(id_, -1)
    assert index.positions([*known, *asked]).tolist() == [truth.get(i, -1) for i in
                                                          [*known, *asked]]


@given(st.lists(ids, max_size=40))
def test_distinct_ids_are_numbered_in_sorted_order(some):
    index = IdIndex.distinct(some)
    assert [index.id_at(rank) for rank in range(len(index))] == sorted(
        set(some), key=lambda id_: id_.encode("utf-8", "surrogatepass"))
    assert all(index.position(id_) >= 0 for id_ in some)


def test_an_id_longer_than_every_known_one_is_not_taken_for_its_prefix():
    index = IdIndex(["c001", "c002"])
    assert index.position("c0011") == -1
    assert index.positions(["c0011", "c002"]).tolist() == [-1, 1]


def test_repeated_ids_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="distinct ids"):
        IdIndex(["a", "b", "a"])


def test_an_id_with_a_nul_character_is_refused():
    with pytest.raises(ValueError, match="NUL character"):
        IdIndex(["a\0"])
