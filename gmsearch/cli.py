"""The ``gmsearch`` command line: quickstart, run, report, export, evaluate, compare, plugins, storage-server."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from gmsearch import __version__

if TYPE_CHECKING:
    import optuna

PROG = "gmsearch"


def _positive(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gmsearch.errors import UsageError

    if Path(args.workdir).exists() and not Path(args.workdir).is_dir():  # before torch is imported
        raise UsageError(f"--workdir {args.workdir!r} is a file; give a folder (it is created if missing)")

    from gmsearch import interrupt
    from gmsearch.quickstart import run_quickstart
    with interrupt.stop_on_sigint():
        run_quickstart(
            workdir=args.workdir, generations=args.generations, epochs=args.epochs, seed=args.seed,
            device=args.device, study_name=args.study_name, show_progress_bar=not args.no_progress,
        )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from gmsearch import config  # no torch yet: a bad config fails at once

    cfg = config.load(args.config)
    if args.device is not None:
        cfg.device = config.parse({"device": args.device}).device
    if args.workers_per_device is not None:
        if args.workers is not None:
            from gmsearch.errors import UsageError

            raise UsageError(
                f"--workers {args.workers} and --workers-per-device {args.workers_per_device}: give one of them "
                "(--workers-per-device K puts K workers on each device)"
            )
        cfg.workers, cfg.workers_per_device = 1, args.workers_per_device  # overrides the config's choice

    import optuna

    from gmsearch import runner

    if not args.verbose:  # the plan, the progress bar and the summary say what Optuna's INFO lines would
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    print(f"gmsearch run {args.config}: study {cfg.study.name!r}", flush=True)
    study = runner.run(cfg, workers=args.workers, echo=lambda line: print(line, flush=True),
                       show_progress_bar=not args.no_progress)
    failed = runner.failure_summary(study)
    if failed:
        print(f"{PROG}: error: study {study.study_name!r}: {failed}", file=sys.stderr)
        return 1
    print(f"study {study.study_name}: {runner.trial_summary(study)}")
    for line in next_steps(study, cfg.study.storage):
        print(line)
    return 0


def _accuracy(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def next_steps(study: optuna.Study, storage: str) -> list[str]:
    """The lines after a run: the best trial (or the Pareto front) and the ``report`` and ``export`` commands
    that work on it (quoted for a POSIX shell; a password in the URL is masked)."""
    from optuna.trial import TrialState

    from gmsearch.search.study import mask_url

    where = f"--storage {shlex.quote(mask_url(storage))} --study {shlex.quote(study.study_name)}"
    lines = []
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return [f"report: gmsearch report {where} --out report.html"]  # nothing finished: nothing to export
    if len(study.directions) == 1:
        best = study.best_trial
        lines.append(f"best: trial {best.number}, fitness {best.value:.4f} (val clean "
                     f"{_accuracy(best.user_attrs.get('clean_acc'))}, adv {_accuracy(best.user_attrs.get('adv_acc'))})")
        export = "--best"
    else:  # --best needs one best trial: name one of the Pareto front
        front = sorted(study.best_trials, key=lambda t: t.number)
        lines.append("pareto front: " + "; ".join(
            f"trial {t.number} (values {', '.join(_accuracy(v) for v in t.values)})" for t in front
        ))
        export = f"--trial {front[0].number}"
    lines.append(f"report: gmsearch report {where} --out report.html")
    lines.append(f"export: gmsearch export {where} {export}")
    return lines


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
        num_classes=args.num_classes, onnx=args.onnx,
    )
    print(f"trial {result.trial} exported to {result.folder}: " + ", ".join(f.name for f in result.files))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from gmsearch.report.evaluate import DEFAULT_ATTACKS, DEFAULT_SOURCES, evaluate_transfer

    result = evaluate_transfer(
        args.storage, args.study, config_file=args.config, trial=args.trial, population=args.population,
        sources=args.sources or DEFAULT_SOURCES, attack_names=args.attacks or DEFAULT_ATTACKS,
        n_images=args.images, quick=args.quick, device=args.device, echo=lambda line: print(line, flush=True),
    )
    print(result.to_text())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from gmsearch import config  # no torch yet: a bad config fails at once

    cfg = config.load(args.config)
    if args.device is not None:
        cfg.device = config.parse({"device": args.device}).device

    import optuna

    from gmsearch import interrupt
    from gmsearch.evaluation.compare import compare, compare_lines, parse_seeds, parse_ways

    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    ways, seeds = parse_ways(args.ways), parse_seeds(args.seeds)
    print(f"gmsearch compare {args.config}: ways {', '.join(ways)}, seeds {', '.join(map(str, seeds))}"
          f"{' (quick smoke run)' if args.quick else ''}", flush=True)
    with interrupt.stop_on_sigint():
        result = compare(cfg, ways=ways, seeds=seeds, repeats=args.repeats, budget=args.budget, quick=args.quick,
                         retrain_epochs=args.retrain_epochs, base=args.base, echo=lambda line: print(line, flush=True))
    for line in compare_lines(result):
        print(line)
    print(f"stored on study {result['study']} (gmsearch report --study {result['study']} draws it)")
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


class _Parser(argparse.ArgumentParser):
    """One line for a bad argument (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gmsearch",
        description="Evolve CNN architectures with gradient misalignment toward low adversarial transferability.",
    )
    parser.add_argument("--version", action="version", version=f"gmsearch {__version__}")
    _add_common(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quickstart", help="run (or resume) the embedded digits demo")
    q.add_argument("--workdir", default=".", help="where the SQLite study, caches and HTML go")
    q.add_argument("--generations", type=_positive, default=3, help="generations to add (default 3)")
    q.add_argument("--epochs", type=_positive, default=8, help="training epochs per child (default 8)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    q.add_argument("--study-name", default="quickstart")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    q.set_defaults(func=_cmd_quickstart)

    r = sub.add_parser("run", help="run the study described by a TOML config")
    r.add_argument("config", help="TOML config file (see README: config reference)")
    r.add_argument("--workers", type=_positive, default=None, help="worker processes (default: config's)")
    r.add_argument("--workers-per-device", type=_positive, default=None, metavar="K",
                   help="K worker processes on each device (every GPU, else the CPU); not with --workers")
    r.add_argument("--device", default=None, help="override the config's device: auto, cpu, cuda, cuda:1, mps")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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
    ex.add_argument("--onnx", action="store_true",
                    help="also write model.onnx, for ONNX runtimes without torch (pip install 'gmsearch[onnx]')")
    ex.set_defaults(func=_cmd_export)

    ev = sub.add_parser("evaluate", help="score a study's network, Ref, Ref+GM and HE+GM on transferred attacks")
    ev.add_argument("--storage", default=None, help="study storage URL (default: the config's)")
    ev.add_argument("--study", default=None, help="study name (default: the config's, or the storage's only one)")
    ev.add_argument("--config", default=None, help="the run's TOML config (default: the one recorded on the study)")
    chosen = ev.add_mutually_exclusive_group()
    chosen.add_argument("--best", action="store_true", help="evaluate the best candidate (the default)")
    chosen.add_argument("--trial", type=int, default=None, help="evaluate this trial")
    chosen.add_argument("--population", action="store_true", help="evaluate every candidate of the population")
    ev.add_argument("--sources", nargs="+", default=None, metavar="SOURCE",
                    help="reference, reference_at, architecture names (resnet18, hand_b, ...), ensemble:a+b")
    ev.add_argument("--attacks", nargs="+", default=None, metavar="ATTACK", help="registered attack names")
    ev.add_argument("--images", type=_positive, default=None, help="first N test images (default all)")
    ev.add_argument("--quick", action="store_true", help="64 test images, 1-epoch sources and baselines")
    ev.add_argument("--device", default=None, help="override the config's device")
    ev.set_defaults(func=_cmd_evaluate)

    cmp = sub.add_parser("compare", help="compare ways of spending the budget (samplers) at equal child-epochs")
    cmp.add_argument("config", help="TOML config file (its [study] name prefixes every study of the comparison)")
    cmp.add_argument("--ways", default="niche,random,regularized,restarts",
                     help="comma-separated sampler names, each with optional sampler params and dotted "
                          "[fitness]/[search]/[training] keys: niche[reevaluate=0.25], "
                          "niche[fitness.last_epochs=2] (default niche,random,regularized,restarts)")
    cmp.add_argument("--seeds", default="0-4", help="a range (0-4) or a list (0,1,2) of seeds (default 0-4)")
    cmp.add_argument("--base", default="niche", metavar="WAY",
                     help="the way compared with each other way, one of --ways (default niche)")
    cmp.add_argument("--repeats", type=_positive, default=3, metavar="R",
                     help="fresh initialisations each winner is retrained with (default 3)")
    cmp.add_argument("--budget", type=_positive, default=None,
                     help="child-epochs per way (default: the niche search's planned child-epochs)")
    cmp.add_argument("--retrain-epochs", type=_positive, default=None, metavar="E",
                     help="epochs each winner and HE+GM retrain for (default: the winner's; the last generation's)")
    cmp.add_argument("--quick", action="store_true", help="a smoke run: 8x8 images, 2 x 1 population, 1 epoch")
    cmp.add_argument("--device", default=None, help="override the config's device")
    cmp.set_defaults(func=_cmd_compare)

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
    for command in sub.choices.values():
        _add_common(command, default=argparse.SUPPRESS)
    return parser


def _add_common(parser: argparse.ArgumentParser, *, default: object) -> None:
    """-v and --debug, accepted before and after the subcommand."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log at INFO (per-epoch metrics of every child)")
    parser.add_argument("--debug", action="store_true", default=default, help="show the traceback of an error")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("gmsearch").setLevel(logging.INFO if verbose else logging.WARNING)


def _exit_code(exc: BaseException) -> int:
    from gmsearch.errors import GmsearchError

    if isinstance(exc, GmsearchError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, ValueError | KeyError | TypeError | FileNotFoundError):
        return 2  # a bad setting, name or path: the message says what is allowed
    return 1  # the environment: files, devices, services


def _message(exc: BaseException) -> str:
    from gmsearch.errors import GmsearchError

    if isinstance(exc, KeyboardInterrupt):
        from gmsearch.interrupt import MESSAGE

        return MESSAGE
    text = " ".join(str(exc).split()) or type(exc).__name__
    known = isinstance(exc, GmsearchError | ValueError | KeyError | TypeError | OSError)
    return text if known else f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (already reported in one line)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    _configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except (Exception, KeyboardInterrupt) as exc:
        if args.debug:
            raise
        interrupted = _exit_code(exc) == 130  # not an error: the run stopped where asked
        print(f"{PROG}: {_message(exc)}" if interrupted else f"{PROG}: error: {_message(exc)}", file=sys.stderr)
        return _exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
