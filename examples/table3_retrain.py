"""Tables 3 and 7: the evolved architecture retrained from scratch on other datasets.

Takes the best architecture of the search on ``--dataset`` and, for every
``--targets`` dataset, trains the reference architecture on it (the new
reference), then Ref+GM and the evolved architecture with GM against that
reference, and reports clean and adversarial (L-inf PGD, from the new
reference) accuracy. By default the targets follow the paper's reduced
protocol (Table 7: 1,000 / 100 images per class); ``--full`` uses the whole
sets (Table 3). Targets that cannot be loaded are skipped. Stored as
``gmsearch:results:table7`` (or ``table3``).

Run::

    python examples/table3_retrain.py --quick --targets /path/to/mnist.npz
    python examples/table3_retrain.py --targets mnist fashion_mnist kmnist
"""

from __future__ import annotations

from collections.abc import Sequence

from gmsearch import paper as ex


def main(argv: Sequence[str] | None = None) -> int:
    parser = ex.experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["mnist", "fashion_mnist", "kmnist"],
                        help="datasets to retrain on: registered names or .npz paths")
    parser.add_argument("--full", action="store_true", help="full target datasets (Table 3) instead of reduced")
    args = parser.parse_args(argv)
    exp = ex.Experiment.from_args(args)
    table = ex.table3(exp, targets=args.targets, reduced=not args.full)
    print(exp.header())
    print(table)
    exp.record(table)
    exp.log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
