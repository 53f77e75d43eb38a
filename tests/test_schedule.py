from hypothesis import given
from hypothesis import strategies as st

from hpcinfer.parallel.partition import split_range, split_sizes
from hpcinfer.schedule.chunks import make_chunks


def test_chunks_cover_rows_in_order():
    chunks = make_chunks(10, 4)
    assert [(c.index, c.start, c.stop) for c in chunks] == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert make_chunks(0, 4) == []


def test_splits_give_the_remainder_to_the_lowest_ranks():
    assert split_sizes(50, 4) == [13, 13, 12, 12]
    assert [len(split_range(10, r, 4)) for r in range(4)] == [3, 3, 2, 2]
    assert [list(split_range(2, r, 3)) for r in range(3)] == [[0], [1], []]


@given(st.integers(0, 500), st.integers(1, 64))
def test_splits_partition_items_exactly_once(n, size):
    owned = [i for r in range(size) for i in split_range(n, r, size)]
    assert owned == list(range(n))
