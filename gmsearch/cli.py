"""The ``gmsearch`` command line: quickstart, run, report, export, plugins, storage-server."""

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


def _cmd_report(args: argparse.Namespace) -> int:
    from gmsearch.report._html import write_report
    from gmsearch.search.study import open_study

    study = open_study(args.storage, args.study)
    path = write_report(study, args.out, artifact_store=args.artifacts)
    print(f"report of study {study.study_name!r} ({len(study.trials)} trials): {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from gmsearch.report.export import export_trial

    result = export_trial(
        storage=args.storage, study_name=args.study, trial=args.trial, out=args.out, artifacts=args.artifacts,
        refined=args.refined, image_size=args.image_size, in_channels=args.in_channels,
        num_classes=args.num_classes,
    )
    print(f"trial {result.trial} exported to {result.folder}: " + ", ".join(f.name for f in result.files))
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


def _cmd_storage_server(args: argparse.Namespace) -> int:
    from gmsearch.search.grpc_proxy import serve

    try:
        serve(args.storage, host=args.host, port=args.port, threads=args.threads,
              ready=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        pass
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

    rep = sub.add_parser("report", help="write one self-contained HTML report of a study")
    rep.add_argument("--storage", default="sqlite:///gmsearch.db",
                     help="study storage URL (default sqlite:///gmsearch.db; also postgresql://..., journal:FILE)")
    rep.add_argument("--study", default=None, help="study name (may be omitted when the storage holds one study)")
    rep.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    rep.add_argument("--artifacts", default=None, help="artifact store directory (for stored attribution maps)")
    rep.set_defaults(func=_cmd_report)

    ex = sub.add_parser("export", help="write a trial's genome, trained weights and a snippet that loads them")
    ex.add_argument("--storage", default="sqlite:///gmsearch.db",
                    help="study storage URL (default sqlite:///gmsearch.db; also postgresql://..., journal:FILE)")
    ex.add_argument("--study", default=None, help="study name (may be omitted when the storage holds one study)")
    which = ex.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, default=None, help="trial number to export")
    which.add_argument("--best", action="store_true", help="export the best trial (the default)")
    ex.add_argument("--out", default=None, help="folder to write (default ./<study>-trial<N>)")
    ex.add_argument("--artifacts", default=None,
                    help="artifact store directory (default gmsearch_artifacts beside the SQLite file, then ./)")
    ex.add_argument("--refined", action="store_true", help="export the weights gmsearch.refine stored")
    ex.add_argument("--image-size", default=None, help="input H or HxW, if the study does not record it")
    ex.add_argument("--in-channels", type=int, default=None, help="input channels, if not recorded")
    ex.add_argument("--num-classes", type=int, default=None, help="number of classes, if not recorded")
    ex.set_defaults(func=_cmd_export)

    p = sub.add_parser("plugins", help="list every registered plugin of every kind")
    p.add_argument("--plugin", action="append", help="also load this plugin folder (name or path)")
    p.set_defaults(func=_cmd_plugins)

    ss = sub.add_parser(
        "storage-server",
        help="serve a study database to many workers through Optuna's gRPC proxy (workers: storage = grpc://HOST:PORT)",
    )
    ss.add_argument("--storage", required=True, help="database URL, e.g. postgresql://user:pass@dbhost/gmsearch")
    ss.add_argument("--host", default="localhost",
                    help="interface to listen on (default localhost; 0.0.0.0 for workers on other machines)")
    ss.add_argument("--port", type=int, default=13000, help="TCP port (default 13000)")
    ss.add_argument("--threads", type=int, default=10, help="requests served at once (default 10)")
    ss.set_defaults(func=_cmd_storage_server)
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
