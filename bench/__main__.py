"""``python -m bench [--quick] [submit e2e priority embeddings batchfile memory]``: run the chosen parts (all by
default) against a private Redis, a real API server and real workers, and print one table of ratios."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import machine
from bench.report import Row, table
from bench.stack import Stack

PARTS = ["submit", "e2e", "priority", "embeddings", "batchfile", "memory"]


@dataclass
class Context:
    """What every part gets: the running stack and the run's options."""

    stack: Stack
    quick: bool
    ran_jobs: bool = False
    processes: dict = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    from inferno_jobs.config import Settings

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f"parts to run, in this order: {' '.join(PARTS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer jobs and repetitions (about a minute)")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn workers of the API (default 2)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes (default 2)")
    parser.add_argument("--express-workers", type=int, default=1,
                        help="processes of the cpu pool's express lane for high jobs (default 1; 0: none)")
    parser.add_argument("--model-dir", type=Path, default=None, help="default: MODEL_DIR (demo models built if missing)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in args.parts] if args.parts else PARTS

    model_dir = args.model_dir or Settings.from_env().model_dir
    from inferno_jobs.demo import build_demo

    built = build_demo(model_dir, ["iris", "minilm"] if {"embeddings", "batchfile", "memory"} & set(parts) else ["iris"])
    for name, where in built.items():
        if where.startswith("skipped"):
            print(f"warning: {name} {where}", file=sys.stderr)

    print("machine:")
    for label, value in machine.describe().items():
        print(f"  {label:13} {value}")
    print(f"parts: {' '.join(parts)}{' (quick)' if args.quick else ''}\n", flush=True)

    started = time.monotonic()
    stack = Stack(model_dir, api_workers=args.api_workers, concurrency=args.concurrency,
                  express_workers=args.express_workers)
    ctx = Context(stack=stack, quick=args.quick)
    rows: list[Row] = []
    try:
        for part in parts:
            t0 = time.monotonic()
            print(f"running {part} ...", flush=True)
            part_rows = importlib.import_module(f"bench.{part}").run(ctx)
            rows.extend(part_rows)
            ctx.ran_jobs = ctx.ran_jobs or part in ("e2e", "priority", "embeddings")
            for row in part_rows:
                print(f"  {row.metric}: {row.value:.2f} {row.unit}"
                      + (f" (baseline {row.baseline:.2f}, {row.ratio:.2f}x)" if row.baseline else ""), flush=True)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        stack.close()
    print()
    print(table(rows))
    for label, processes in ctx.processes.items():
        print(f"\n{label} processes (RSS):")
        for pid, cmd, rss in processes:
            print(f"  {pid:>7}  {rss / 1024 ** 2:7.1f} MiB  {cmd}")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"bench took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
