"""Run seeds: `python -m sim.run --seeds 0-99 [--gate condition] [--mode continuous]` (from tests/)."""

from __future__ import annotations

import argparse
import logging
import time

from sim.invariants import Violation
from sim.world import Settings, World


def run_seed(settings: Settings) -> tuple[World, Violation | None]:
    world = World(settings)
    try:
        world.run()
    except Violation as violation:
        return world, violation
    return world, None


def variant(seed: int) -> tuple[str, str]:
    """The gate and gate mode a seed runs with, when not given."""
    return (("exec", "latch"), ("exec", "continuous"), ("condition", "latch"), ("condition", "continuous"))[seed % 4]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="0-99")
    parser.add_argument("--gate", default=None)
    parser.add_argument("--mode", default=None)
    parser.add_argument("--stop", action="store_true", help="stop at the first violation")
    args = parser.parse_args()
    first, _, last = args.seeds.partition("-")
    seeds = range(int(first), int(last or first) + 1)
    logging.disable(logging.CRITICAL)
    steps = 0
    failed = 0
    started = time.process_time()
    for seed in seeds:
        gate, mode = variant(seed)
        world, violation = run_seed(Settings(seed, gate=args.gate or gate, gate_mode=args.mode or mode))
        steps += world.clock_steps
        if violation is not None:
            failed += 1
            print(world.report(violation).splitlines()[0])
            if args.stop:
                print(world.report(violation))
                break
    cpu = time.process_time() - started
    print(f"{len(seeds)} seeds, {failed} failed, {steps} steps, {cpu:.1f}s CPU, {steps / max(cpu, 1e-9):.0f} steps/s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
