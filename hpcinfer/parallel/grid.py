"""The DP x TP process grid: which ranks share a model, which share the rows.

With `tp` ranks per tensor-parallel group, the world's ranks form `size / tp` groups of
consecutive ranks (consecutive, so that on a cluster a TP group sits on one node and
its all-reduces stay in shared memory). Example: 8 ranks, tp = 2

    world rank   0  1 | 2  3 | 4  5 | 6  7
    dp rank      0  0 | 1  1 | 2  2 | 3  3     (which block of rows)
    tp rank      0  1 | 0  1 | 0  1 | 0  1     (which slice of every weight)

    tp groups: {0,1} {2,3} {4,5} {6,7}          share one copy of the model
    dp groups: {0,2,4,6} {1,3,5,7}              same slice, different rows

The TP rank 0 of each group (its leader) writes the group's results. Models and kernels
see only `Group` objects (hpcinfer.parallel.comm), never the world communicator.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcinfer.errors import JobError
from hpcinfer.parallel.comm import Group


def grid_coords(rank: int, tp: int) -> tuple[int, int]:
    """(dp_rank, tp_rank) of a world rank."""
    return divmod(rank, tp)


def check_tp(size: int, tp: int) -> None:
    if tp < 1 or size % tp:
        raise JobError(
            f"run.tp = {tp} does not divide the {size} rank(s) of this launch "
            f"(launch a multiple of {tp} ranks, or choose a tp that divides {size})"
        )


@dataclass(frozen=True)
class Grid:
    tp_group: Group  # the ranks that share this rank's model (consecutive world ranks)
    dp_group: Group  # the ranks with this rank's tp_rank in every TP group
    dp_rank: int
    dp_size: int

    @property
    def tp(self) -> int:
        return self.tp_group.size

    @property
    def tp_rank(self) -> int:
        return self.tp_group.rank

    @property
    def is_leader(self) -> bool:
        """This rank writes its TP group's results."""
        return self.tp_group.rank == 0

    @classmethod
    def build(cls, comm, tp: int) -> Grid:
        """Split `comm` (collective over it) into TP and DP groups; JobError if tp misfits."""
        size, rank = comm.Get_size(), comm.Get_rank()
        check_tp(size, tp)
        dp_rank, tp_rank = grid_coords(rank, tp)
        tp_comm = comm.Split(color=dp_rank, key=tp_rank)
        dp_comm = comm.Split(color=tp_rank, key=dp_rank)
        return cls(Group(tp_comm), Group(dp_comm), dp_rank=dp_rank, dp_size=size // tp)
