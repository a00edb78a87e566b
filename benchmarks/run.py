"""Run gmsearch's performance benchmarks and print one line per result: ``NAME: value (target)``.

Usage: ``python benchmarks/run.py [--quick] [--device cpu|cuda] [--only gm,pgd,...]``

Each benchmark measures gmsearch and its baseline side by side in one run,
interleaved, and reports medians. On CPU the step timings are process CPU
time (robust to other jobs on the machine); on CUDA, wall time after
synchronising. A missed target prints ``MISS`` with the ratio and still exits
0; an error in a benchmark exits 1 after the others have run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``gmsearch`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import (
    bench_bookkeeping,
    bench_children,
    bench_compile,
    bench_epoch,
    bench_gm,
    bench_gm_batchnorm,
    bench_memory,
    bench_pgd,
    bench_sampler_scale,
    bench_transfer,
    bench_workers,
)
from benchmarks.common import Context, Line, new_workdir

BENCHMARKS = {
    "gm": bench_gm.run,
    "pgd": bench_pgd.run,
    "transfer": bench_transfer.run,
    "epoch": bench_epoch.run,
    "bookkeeping": bench_bookkeeping.run,
    "sampler_scale": bench_sampler_scale.run,
    "workers": bench_workers.run,
    "memory": bench_memory.run,
    "compile": bench_compile.run,
    "children": bench_children.run,
    "gm_batchnorm": bench_gm_batchnorm.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (< 3 minutes on 2 CPU cores)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: 1 on CPU, one core per step as with one worker per core; "
        "torch's default on CUDA)",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    ctx = Context(device=device, quick=args.quick, workdir=new_workdir())
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"# gmsearch benchmarks on {what}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{'quick' if args.quick else 'full'} mode", flush=True)
    failed = []
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            lines: list[Line] = BENCHMARKS[name](ctx)
        except Exception:  # report, run the others, fail at the end
            traceback.print_exc()
            print(f"{name}: ERROR (see the traceback above)", flush=True)
            failed.append(name)
            continue
        for line in lines:
            print(line, flush=True)
        print(f"# {name} took {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print(f"# total {time.perf_counter() - start:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
