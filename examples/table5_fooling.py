"""Table 5: fooling rate (paper 4.2.2) of Ref+GM, HE+GM and NE+GM 1/2 under L-inf PGD, L2 PGD and FGSM.

Adversarial examples are made from the reference with each attack; a
network's fooling rate is the share of fooled images among the test images
both it and the reference classify correctly (lower is better). Budgets
come from ``gmsearch.attacks.default_budget``; the paper raised FGSM's eps
without saying to what (``--fgsm-eps``). Stored as ``gmsearch:results:table5``.

Run::

    python examples/table5_fooling.py --quick
    python examples/table5_fooling.py --dataset /path/to/cifar10_reduced.npz --fgsm-eps 0.0627
"""

from __future__ import annotations

from collections.abc import Sequence

from gmsearch import paper as ex


def main(argv: Sequence[str] | None = None) -> int:
    parser = ex.experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=["pgd_linf", "pgd_l2", "fgsm"], help="attack names")
    parser.add_argument("--fgsm-eps", type=float, default=None, help="FGSM budget (default: the L-inf PGD eps)")
    parser.add_argument("--hand", default="hand_b", help="the hand-engineered baseline architecture")
    args = parser.parse_args(argv)
    exp = ex.Experiment.from_args(args)
    table = ex.table5(exp, attack_names=args.attacks, fgsm_eps=args.fgsm_eps, hand=args.hand)
    print(exp.header())
    print(table)
    exp.record(table)
    exp.log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
