"""Table 6: fooling rate (paper 4.2.3) of the GM networks and of the reference with standard defenses.

L-inf PGD examples are made from the reference on the test images it
classifies correctly, the same for every network. Compared: the reference,
Ref+GM, HE+GM, NE+GM, and the reference behind JPEG compression or a
bilateral filter, and copies of its architecture trained with free (Shafahi
et al. 2019) or fast (Wong et al. 2020) adversarial training. Stored as
``gmsearch:results:table6``.

Run::

    python examples/table6_defenses.py --quick
    python examples/table6_defenses.py --dataset /path/to/cifar10_reduced.npz --jpeg-quality 50
"""

from __future__ import annotations

from collections.abc import Sequence

from gmsearch import paper as ex


def main(argv: Sequence[str] | None = None) -> int:
    parser = ex.experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--hand", default="hand_b", help="the hand-engineered baseline architecture")
    parser.add_argument("--jpeg-quality", type=int, default=75, help="JPEG quality 1..100")
    parser.add_argument("--bilateral-kernel", type=int, default=5, help="bilateral window (odd)")
    parser.add_argument("--bilateral-sigma-space", type=float, default=1.0, help="spatial sigma, pixels")
    parser.add_argument("--bilateral-sigma-color", type=float, default=None,
                        help="range sigma on the [0, 1] scale (default: max(0.1, 2 * attack eps))")
    parser.add_argument("--free-replays", type=int, default=4, help="minibatch replays m of free AT")
    args = parser.parse_args(argv)
    exp = ex.Experiment.from_args(args)
    bilateral = {"kernel_size": args.bilateral_kernel, "sigma_space": args.bilateral_sigma_space,
                 "sigma_color": args.bilateral_sigma_color}
    table = ex.table6(exp, hand=args.hand, jpeg_quality=args.jpeg_quality, bilateral=bilateral,
                      free_replays=args.free_replays)
    print(exp.header())
    print(table)
    exp.record(table)
    exp.log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
