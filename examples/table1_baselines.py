"""Table 1: clean and adversarial accuracy of Ref, Ref+GM and the top-2 NE+GM networks.

Runs (or resumes) the neuroevolution-with-GM search on the chosen dataset,
then scores the reference, the reference's architecture trained with GM and
the two best evolved networks on the test split, against L-inf PGD examples
transferred from the reference. Finally runs the gradient-masking sanity
checks on NE+GM 1 (white-box PGD curve, PGD vs FGSM, transfer from an
independently trained surrogate). Results are stored on the study as the
user attr ``gmsearch:results:table1``.

Run::

    python examples/table1_baselines.py --quick                 # smoke run, digits, ~1-2 min on a CPU
    python examples/table1_baselines.py --generations 10 --epochs 20
    python examples/table1_baselines.py --dataset /path/to/cifar10_reduced.npz --device cuda
"""

from __future__ import annotations

from collections.abc import Sequence

from gmsearch import paper as ex


def main(argv: Sequence[str] | None = None) -> int:
    parser = ex.experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=2, help="how many NE+GM networks to show")
    parser.add_argument("--no-masking-checks", action="store_true", help="skip the gradient-masking checks")
    args = parser.parse_args(argv)
    exp = ex.Experiment.from_args(args)
    table = ex.table1(exp, top=args.top)
    print(exp.header())
    print(table)
    if not args.no_masking_checks:
        name, net, _ = exp.evolved(1)[0]
        report = ex.masking_checks(exp, net)
        print(report.to_text(title=f"\nGradient-masking sanity checks on {name}"))
        table.extra["masking_checks"] = report.as_dict()
    exp.record(table)
    exp.log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
