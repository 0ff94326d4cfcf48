"""How often an ingest helper's memory of known executions forgets a running one.

    .venv/bin/python -m bench.known_ids [--fleets 30000,34000,40000,45000,60000]
                                        [--generations 32768,65536] [--helpers 6]

Each ingest helper remembers the executions it has stored (`metering.known`), two
generations of ids at most. A fleet sends one sample per sandbox per second, in batches of
1,000 sandboxes, and each batch goes to whichever of the `--helpers` helpers is free: so
every helper sees the whole fleet within seconds, in no fixed order. This replays that for
two minutes per fleet and generation size (the memory filled first, as after warm-up) and
prints the share of a helper's lookups that missed: each miss asks the database about the
execution again in that batch. Pure Python, no database; a few seconds a line.
"""

from __future__ import annotations

import argparse
import random

from metering.known import KnownOwners

BATCH = 1_000
SECONDS = 120


def miss_rate(fleet: int, generation: int, helpers: int, seed: int = 1) -> float:  # float-ok
    """The share of one helper's lookups that missed, over `SECONDS` of a running fleet."""
    rand = random.Random(seed)
    memory = KnownOwners(generation=generation)
    ids = [f"exe_{n}" for n in range(fleet)]
    for execution in ids:  # warmed up: every running execution stored once
        memory._owner.put(execution, "team")
    looked = missed = 0
    for _ in range(SECONDS):
        for start in range(0, fleet, BATCH):
            if rand.random() >= 1 / helpers:
                continue  # another helper took this batch
            for execution in ids[start:start + BATCH]:
                looked += 1
                if memory.owner(execution) is None:
                    missed += 1
                    memory._owner.put(execution, "team")  # asked, then remembered
    return missed / looked if looked else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleets", default="30000,34000,40000,45000,60000")
    parser.add_argument("--generations", default="32768,65536")
    parser.add_argument("--helpers", type=int, default=6)
    args = parser.parse_args()
    generations = [int(g) for g in args.generations.split(",")]
    print(f"{args.helpers} helpers; share of a helper's lookups that missed, "
          f"{SECONDS} s of samples after warm-up")
    print("running sandboxes  " + "  ".join(f"generation {g:>6,}" for g in generations))
    for fleet in (int(f) for f in args.fleets.split(",")):
        rates = [miss_rate(fleet, g, args.helpers) for g in generations]
        print(f"{fleet:>17,}  " + "  ".join(f"{100 * r:>16.1f} %" for r in rates))


if __name__ == "__main__":
    main()
