"""How work stealing scales past this machine: a discrete-event model, 64 to 16,384 groups.

    python benchmarks/steal_simulation.py [--latency-us 4] [--chunk-ms 12.5] [--chunks-per-group 32]

The model is hpcinfer.schedule.balance's policy, event by event:
  - N = groups x chunks-per-group chunks; group g starts with the g-th contiguous block.
  - Chunk i costs chunk-ms, ten times that for the first half of the chunks (the skewed
    workload of benchmarks/balance.py: the static split puts all heavy chunks on the
    first half of the groups). Claiming from one's own range costs one atomic (claim-us).
  - A group whose range is empty probes victims in a random order; every probe costs
    latency-us (a read, and a compare-and-swap when the victim has work). The first
    non-empty victim loses the tail half of its range to the thief. The number of
    empty victims probed before a non-empty one is drawn from the random order (the
    state is then re-checked at the moment the probe lands, as an atomic would see it).
  - A group probes at most MAX_PROBES (64) victims (all others, on fewer groups) before
    it stops, as hpcinfer.schedule.balance does; the run ends when the last group stops.
Predicted efficiency = total chunk work / (groups x makespan).

Assumptions, stated: latency-us defaults to 4 us, measured on this machine between two
ranks through shared memory (benchmarks/steal_latency.py); across nodes, RDMA atomics
are typically 2-10 us, so --latency-us 10 is the pessimistic case. Concurrent probes of
one victim are not queued behind each other (no contention modelled); chunk times have
no noise beyond the 10x skew; failed compare-and-swaps are not modelled (they cost one
more probe). chunk-ms defaults to the light chunks of benchmarks/balance.py (250 rows at
50 us each).
"""

from __future__ import annotations

import argparse
import heapq
import random

from hpcinfer.schedule.balance import MAX_PROBES


class NonEmpty:
    """The set of groups with work, with O(1) add, remove and random choice."""

    def __init__(self):
        self.items: list[int] = []
        self.where: dict[int, int] = {}

    def add(self, g: int) -> None:
        if g not in self.where:
            self.where[g] = len(self.items)
            self.items.append(g)

    def remove(self, g: int) -> None:
        i = self.where.pop(g, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.where[last] = i

    def __len__(self) -> int:
        return len(self.items)


def simulate(
    groups: int, per_group: int, chunk_s: float, latency_s: float, claim_s: float, seed: int = 0
) -> tuple[float, float, float, int]:
    """(makespan, static makespan, total work, steals) for one configuration."""
    rng = random.Random(seed)
    n = groups * per_group

    def cost(i: int) -> float:
        return chunk_s * (10 if i < n // 2 else 1)

    total = chunk_s * (10 * (n // 2) + (n - n // 2))
    static = max(
        sum(cost(i) for i in range(g * per_group, (g + 1) * per_group)) for g in (0, groups - 1)
    )
    head = [g * per_group for g in range(groups)]
    tail = [(g + 1) * per_group for g in range(groups)]
    nonempty = NonEmpty()
    for g in range(groups):
        nonempty.add(g)
    events = [(0.0, g) for g in range(groups)]
    heapq.heapify(events)
    end, steals = 0.0, 0
    while events:
        now, g = heapq.heappop(events)
        if head[g] < tail[g]:  # work of its own: claim the head
            i = head[g]
            head[g] += 1
            if head[g] == tail[g]:
                nonempty.remove(g)
            heapq.heappush(events, (now + claim_s + cost(i), g))
            continue
        others = len(nonempty) - (1 if g in nonempty.where else 0)
        budget = min(groups - 1, MAX_PROBES)
        # Empty victims probed before the first non-empty one, in a random order.
        empty = groups - 1 - others
        misses = 0
        while misses < min(empty, budget) and rng.random() >= others / (groups - 1 - misses):
            misses += 1
        if misses == budget or others == 0:  # no work among the probed: stop
            end = max(end, now + budget * latency_s)
            continue
        land = now + (misses + 1) * latency_s
        victim = rng.choice(nonempty.items)
        if victim == g or tail[victim] - head[victim] <= 0:
            heapq.heappush(events, (land, g))  # emptied meanwhile: look again
            continue
        k = (tail[victim] - head[victim] + 1) // 2
        head[g], tail[g] = tail[victim] - k, tail[victim]
        tail[victim] -= k
        if head[victim] == tail[victim]:
            nonempty.remove(victim)
        nonempty.add(g)
        steals += 1
        heapq.heappush(events, (land, g))
    return end, static, total, steals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-us", type=float, default=4.0)
    parser.add_argument("--claim-us", type=float, default=2.0)
    parser.add_argument("--chunk-ms", type=float, default=12.5)
    parser.add_argument("--chunks-per-group", type=int, default=32)
    args = parser.parse_args()
    print(
        f"model: steal probe {args.latency_us} us, own claim {args.claim_us} us, chunks "
        f"{args.chunk_ms} ms (x10 for the first half), {args.chunks_per_group} per group"
    )
    print(f"{'groups':>7} {'steal eff.':>10} {'static eff.':>11} {'makespan':>9} {'steals':>8}")
    for groups in (64, 256, 1024, 4096, 16384):
        end, static, total, steals = simulate(
            groups,
            args.chunks_per_group,
            args.chunk_ms / 1e3,
            args.latency_us / 1e6,
            args.claim_us / 1e6,
        )
        print(
            f"{groups:>7} {total / (groups * end):>10.1%} {total / (groups * static):>11.1%} "
            f"{end:>8.2f}s {steals:>8}"
        )


if __name__ == "__main__":
    main()
