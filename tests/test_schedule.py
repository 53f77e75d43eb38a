from hypothesis import given
from hypothesis import strategies as st

from hpcinfer.schedule import block, make_chunks


def test_chunks_cover_rows_in_order():
    chunks = make_chunks(10, 4)
    assert [(c.index, c.start, c.stop) for c in chunks] == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert make_chunks(0, 4) == []


def test_block_gives_remainder_to_lowest_ranks():
    assert [len(block(10, r, 4)) for r in range(4)] == [3, 3, 2, 2]
    assert [list(block(2, r, 3)) for r in range(3)] == [[0], [1], []]


@given(st.integers(0, 500), st.integers(1, 64))
def test_blocks_partition_items_exactly_once(n, size):
    owned = [i for r in range(size) for i in block(n, r, size)]
    assert owned == list(range(n))
