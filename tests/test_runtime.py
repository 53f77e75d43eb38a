from hpcinfer.runtime import pinned_cores, threads_per_rank


def test_threads_are_the_node_cores_shared_by_its_ranks():
    assert threads_per_rank(16, 4) == 4
    assert threads_per_rank(2, 3) == 1  # oversubscribed: never zero
    assert threads_per_rank(2, 1) == 2
    assert threads_per_rank(16, 4, requested=7) == 7


def test_pinning_gives_each_local_rank_its_own_cores():
    cores = list(range(8))
    assert [pinned_cores(cores, r, 2) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert pinned_cores([0, 1], 2, 1) == [0]  # oversubscribed ranks wrap around
