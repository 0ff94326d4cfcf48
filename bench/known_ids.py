"""How often an ingest helper's memory of known executions forgets a running one, and how
much it holds.

    .venv/bin/python -m bench.known_ids [--fleets 20000,30000,34000,40000,45000,60000]
                                        [--helpers 6] [--lifetime 600]

Each ingest helper remembers the executions it has stored (`metering.known`), two
generations of ids at most. A fleet sends one sample per sandbox per second, in batches of
1,000 sandboxes, and each batch goes to whichever of the `--helpers` helpers is free: so
every helper sees the whole fleet within seconds, in no fixed order. Each sandbox is replaced
by a new execution after `--lifetime` seconds. This replays five minutes of that (after the
memory has seen the fleet for a lifetime) on a simulated clock, for the memory as it was (a
generation of 32,768 ids, no time bound), a larger generation alone, and as it is (65,536 ids
or a minute, whichever comes first), and prints, per fleet, the share of a helper's lookups
of running executions that missed (each miss asks the database about the execution again in
that batch) and the most ids the memory held. Pure Python, no database; seconds a fleet.
"""

from __future__ import annotations

import argparse
import random

from metering.known import GENERATION, GENERATION_S, KnownOwners

BATCH = 1_000
SECONDS = 300
MEMORIES = (("32,768 ids", 32_768, float("inf")),  # float-ok: seconds
            (f"{GENERATION:,} ids", GENERATION, float("inf")),  # float-ok: seconds
            (f"{GENERATION:,} ids or {GENERATION_S:.0f} s", GENERATION, GENERATION_S))


def replay(fleet: int, generation: int, seconds: float,  # float-ok: seconds
           helpers: int, lifetime: int, seed: int = 1) -> tuple[float, int]:  # float-ok
    """(share of lookups of running executions that missed, most ids held) for one helper."""
    rand = random.Random(seed)
    now = [0.0]  # float-ok: simulated seconds
    memory = KnownOwners(generation, seconds, clock=lambda: now[0])
    looked = missed = held = 0
    for second in range(lifetime + SECONDS):
        now[0] = float(second)  # float-ok: simulated seconds
        measured = second >= lifetime
        for start in range(0, fleet, BATCH):
            if rand.random() >= 1 / helpers:
                continue  # another helper took this batch
            for slot in range(start, min(start + BATCH, fleet)):
                execution = f"exe_{slot}_{(second + slot) // lifetime}"
                if memory.owner(execution) is None:
                    # A new execution's first sight is no miss: it was never stored here.
                    new = (second + slot) % lifetime < helpers * 10
                    missed += measured and not new
                    memory.remember({execution: "team"})  # asked, then remembered
                looked += measured
        if measured:
            held = max(held, len(memory))
    return (missed / looked if looked else 0.0), held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fleets", default="20000,30000,34000,40000,45000,60000")
    parser.add_argument("--helpers", type=int, default=6)
    parser.add_argument("--lifetime", type=int, default=600)
    args = parser.parse_args()
    print(f"{args.helpers} helpers, {args.lifetime} s lives; per memory: the share of a "
          f"helper's lookups of running executions that missed / the most ids held, over "
          f"{SECONDS} s after warm-up")
    print(f"{'running sandboxes':>17}  " + "  ".join(f"{name:>24}" for name, _, _ in MEMORIES))
    for fleet in (int(f) for f in args.fleets.split(",")):
        cells = []
        for _, generation, seconds in MEMORIES:
            rate, held = replay(fleet, generation, seconds, args.helpers, args.lifetime)
            cells.append(f"{100 * rate:>9.1f} % / {held:>8,}")
        print(f"{fleet:>17,}  " + "  ".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
