"""Fig. 3: integrated-gradient maps of Ref, Ref+GM and NE+GM, and their total pixel distance to Ref.

Computes integrated gradients (Captum) for test images all three networks
classify correctly, normalised to [-1, 1] per image (red negative, green
positive), writes the maps of the first ``--images`` as a self-contained
HTML (plotly) and a PNG (matplotlib), and prints the mean per-pixel distance
of the GM networks' maps to the reference's. Stored as ``gmsearch:results:fig3``.

Run::

    python examples/fig3_attributions.py --quick
    python examples/fig3_attributions.py --dataset /path/to/cifar10_reduced.npz --out figures/
"""

from __future__ import annotations

from collections.abc import Sequence

from gmsearch import paper as ex


def main(argv: Sequence[str] | None = None) -> int:
    parser = ex.experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images drawn in the figure")
    parser.add_argument("--distance-images", type=int, default=100, help="images the distance is averaged over")
    parser.add_argument("--out", default=None, help="folder for the HTML and PNG (default: --workdir)")
    args = parser.parse_args(argv)
    exp = ex.Experiment.from_args(args)
    table, files = ex.fig3(exp, n_show=args.images, n_distance=args.distance_images, out_dir=args.out)
    print(exp.header())
    print(table)
    exp.record(table)
    exp.log(f"done; wrote {', '.join(str(p) for p in files.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
