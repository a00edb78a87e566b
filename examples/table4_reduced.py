"""Table 4: reduced data with the hand-engineered baseline: Ref, Ref+GM, HE+GM, NE+GM 1 and 2.

The reduced-dataset experiment of section 4.2: the reference is the simple
hand-engineered ``hand_a`` and the extra baseline ``hand_b`` is trained with
GM (HE+GM). Pass the reduced CIFAR-10 ``.npz`` (or ``--reduced`` for a
dataset loaded whole). Stored as ``gmsearch:results:table4``.

Run::

    python examples/table4_reduced.py --quick
    python examples/table4_reduced.py --dataset /path/to/cifar10_reduced.npz --device cuda
"""

from __future__ import annotations

from collections.abc import Sequence

from gmsearch import paper as ex


def main(argv: Sequence[str] | None = None) -> int:
    parser = ex.experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--hand", default="hand_b", help="the hand-engineered baseline architecture")
    parser.add_argument("--top", type=int, default=2, help="how many NE+GM networks to show")
    args = parser.parse_args(argv)
    exp = ex.Experiment.from_args(args)
    table = ex.table4(exp, hand=args.hand, top=args.top)
    print(exp.header())
    print(table)
    exp.record(table)
    exp.log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
