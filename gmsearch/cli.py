"""The ``gmsearch`` command line: quickstart, run, plugins."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gmsearch import __version__


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from gmsearch.quickstart import run_quickstart

    run_quickstart(
        workdir=args.workdir, generations=args.generations, epochs=args.epochs, seed=args.seed,
        device=args.device, study_name=args.study_name, show_progress_bar=not args.no_progress,
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from gmsearch import config, runner

    cfg = config.load(args.config)
    study = runner.run(cfg, workers=args.workers)
    best = [t for t in study.get_trials(deepcopy=False) if t.values]
    print(f"study {study.study_name}: {len(study.trials)} trials, {len(best)} finished")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from gmsearch.plugins import load_plugins, table

    load_plugins(args.plugin or [])
    rows = table()
    width = max((len(name) for _, name, _, _ in rows), default=4)
    kind = None
    for k, name, description, origin in rows:
        if k != kind:
            print(f"\n{k}:")
            kind = k
        print(f"  {name:<{width}}  {description}  [{origin}]")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gmsearch",
        description="Evolve CNN architectures with gradient misalignment toward low adversarial transferability.",
    )
    parser.add_argument("--version", action="version", version=f"gmsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO (per-epoch metrics)")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="run (or resume) the embedded digits demo")
    q.add_argument("--workdir", default=".", help="where the SQLite study, caches and HTML go")
    q.add_argument("--generations", type=int, default=3, help="generations to add (default 3)")
    q.add_argument("--epochs", type=int, default=8, help="training epochs per child (default 8)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    q.add_argument("--study-name", default="quickstart")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    q.set_defaults(func=_cmd_quickstart)

    r = sub.add_parser("run", help="run the study described by a TOML config")
    r.add_argument("config", help="TOML config file (see README: config reference)")
    r.add_argument("--workers", type=int, default=None, help="worker processes (default: config's)")
    r.set_defaults(func=_cmd_run)

    p = sub.add_parser("plugins", help="list every registered plugin of every kind")
    p.add_argument("--plugin", action="append", help="also load this plugin folder (name or path)")
    p.set_defaults(func=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.verbose:
        logging.getLogger("gmsearch").setLevel(logging.INFO)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"gmsearch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
