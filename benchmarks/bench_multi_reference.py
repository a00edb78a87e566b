"""GM against several references: does misaligning against ``hand_a`` and ``hand_b`` raise the worst case
over sources that took no part in training?

Per seed (the config's data split, reference and caches; ``benchmarks/compare_digits.toml`` by default, so
the sources are the ones ``gmsearch evaluate`` trains for the README's matrix): the reference's
architecture (Ref+GM) and ``hand_b`` (HE+GM) are trained with GM, from the same initialisation and batch
order, once against the reference alone (the paper) and once against ``[training] references =
[reference, hand_b]``. Each is scored on the test split against held-out sources (independently
trained ``squeezenet1_1`` and the slightly robust ``reference_at``, ``--source-epochs`` each (the
reference's by default, so they are the matrix's cached sources); neither is a GM reference) and against
the reference, with MI-FGSM and VMI-FGSM (the dataset's default budget).
Printed per network and setting: clean accuracy, accuracy on the reference's sets, the worst held-out
pair and the held-out ``all`` (correct under every held-out pair); mean +- sd over seeds, and the two
references minus one, paired over seeds (one-sided 95% lower bound, paired t; seeds ahead).

Run::

    python benchmarks/bench_multi_reference.py --config benchmarks/compare_digits.toml --seeds 0-2 --images 200
    python benchmarks/bench_multi_reference.py --quick     # a smoke run (tests/test_multi_reference.py)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``gmsearch`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import copy

import torch

from benchmarks.common import new_workdir
from gmsearch import attacks, config, pipeline
from gmsearch.evaluation.compare import paired_stats, parse_seeds
from gmsearch.evaluation.metrics import predict
from gmsearch.nets import zoo
from gmsearch.report.evaluate import Networks, transfer_sets
from gmsearch.search.baselines import reference_architecture, train_with_gm

HELD_OUT = ("squeezenet1_1", "reference_at")
ATTACKS = ("mi_fgsm", "vmi_fgsm")
EXTRA = "hand_b"
SETTINGS = ("one", "two")  # GM against the reference; against the reference and EXTRA


def measure_seed(cfg: config.RunConfig, *, epochs: int, held_out: Sequence[str], attack_names: Sequence[str],
                 n_images: int | None, source_epochs: int, say: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """``{network: {setting: {clean, reference, worst, all}}}`` for one seed (``cfg.seed``)."""
    echo = (lambda line: print(f"  {line}", flush=True)) if say else (lambda _line: None)
    dev = pipeline.device_for(cfg)
    data = pipeline.load_data(cfg, device=dev)
    reference = pipeline.make_reference(cfg, data, device=dev, echo=echo)
    two = copy.deepcopy(cfg)
    two.training.references = [cfg.reference.name, EXTRA]
    objectives = {"one": pipeline.make_objective(cfg, data, reference, device=dev),
                  "two": pipeline.make_objective(two, data, reference, device=dev)}
    nets = Networks(cfg, objectives["one"], source_epochs=source_epochs, baseline_epochs=epochs, say=echo)
    x, y = data.test.x[:n_images], data.test.y[:n_images]
    made = {n: attacks.create(n, **pipeline.attack_params(cfg, data.input_shape, name=n, overrides={}))
            for n in attack_names}
    held = transfer_sets(nets, held_out, made, x, y, say=echo)
    own = transfer_sets(nets, ["reference"], made, x, y, say=echo)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, build in (("Ref+GM", lambda s: reference_architecture(reference, data, seed=s)),
                         ("HE+GM", lambda s: _hand_b(objectives["one"], s))):
        out[label] = {}
        for setting, objective in objectives.items():
            seed = cfg.seed + 1
            net = build(seed)  # the same initialisation and batch order for both settings
            train_with_gm(net, objective, epochs=epochs, seed=seed, log=lambda _line: None)
            net.eval()
            right = {pair: predict(net, adv).to(y.device) == y for pair, adv in held.items()}
            out[label][setting] = {
                "clean": (predict(net, x).to(y.device) == y).float().mean().item(),
                "reference": min((predict(net, adv).to(y.device) == y).float().mean().item() for adv in own.values()),
                "worst": min(r.float().mean().item() for r in right.values()),
                "all": torch.stack(list(right.values())).all(0).float().mean().item(),
            }
            scores = " ".join(f"{k} {v:.4f}" for k, v in out[label][setting].items())
            echo(f"seed {cfg.seed} {label} {setting}: {scores}")
    return out


def _hand_b(objective: object, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return objective.build(zoo.genome("hand_b")).to(objective.device)  # type: ignore[attr-defined]


def lines(runs: dict[int, dict[str, dict[str, dict[str, float]]]]) -> list[str]:
    seeds = sorted(runs)
    out = [f"test split, mean +- sd over seeds {seeds}; 'one': GM against the reference, 'two': and {EXTRA}; "
           "reference: worst of its sets; worst / all: over the held-out sources' sets"]
    for label in runs[seeds[0]]:
        for setting in SETTINGS:
            cells = []
            for metric in ("clean", "reference", "worst", "all"):
                values = [100 * runs[s][label][setting][metric] for s in seeds]
                sd = f" +- {statistics.stdev(values):.1f}" if len(values) > 1 else ""
                cells.append(f"{metric} {statistics.fmean(values):.1f}{sd}")
            out.append(f"  {label:<7} {setting}: " + ", ".join(cells))
        cells = []
        for metric in ("clean", "reference", "worst", "all"):
            st = paired_stats([100 * runs[s][label]["two"][metric] for s in seeds],
                              [100 * runs[s][label]["one"][metric] for s in seeds])
            low = "n/a" if st["lower95"] is None else f"{st['lower95']:+.1f}"
            cells.append(f"{metric} {st['mean_diff']:+.1f} (>= {low}, {st['wins']}/{st['n']})")
        out.append(f"  {label:<7} two - one (paired): " + "; ".join(cells))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("compare_digits.toml")))
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--epochs", type=int, default=8, help="GM training epochs of Ref+GM and HE+GM")
    parser.add_argument("--source-epochs", type=int, default=None,
                        help="training epochs of each held-out source (default the reference's)")
    parser.add_argument("--images", type=int, default=None, help="the first N test images (default all)")
    parser.add_argument("--quick", action="store_true",
                        help="8x8 digits (20 train, 10 test images per class), 2-epoch networks, one seed")
    parser.add_argument("--workdir", default=None, help="caches and artifacts here instead of the config's folders "
                                                        "(--quick: a fresh temporary folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = config.load(args.config)
    work = Path(args.workdir) if args.workdir else new_workdir() if args.quick else None
    if work is not None:
        base.study.cache_dir, base.study.artifacts = str(work / "cache"), str(work / "artifacts")
    seeds = [0] if args.quick else parse_seeds(args.seeds)
    held_out, attack_names = (("squeezenet1_1",), ("fgsm",)) if args.quick else (HELD_OUT, ATTACKS)
    if args.quick:
        base.data.image_size, base.reference.epochs = 8, 2
        base.data.max_train_per_class, base.data.max_test_per_class = 20, 10
    start, runs = time.perf_counter(), {}
    for seed in seeds:
        cfg = copy.deepcopy(base)
        cfg.seed = seed
        print(f"seed {seed}", flush=True)
        runs[seed] = measure_seed(cfg, epochs=2 if args.quick else args.epochs, held_out=held_out,
                                  attack_names=attack_names, n_images=64 if args.quick else args.images,
                                  source_epochs=2 if args.quick else args.source_epochs or base.reference.epochs)
    for line in lines(runs):
        print(line)
    print(f"# {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
