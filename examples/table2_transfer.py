"""Table 2: adversarial accuracy of Ref, Ref+GM and NE+GM on examples transferred from other networks.

Trains the source networks (ResNet-18, VGG-11-BN, DenseNet-121,
SqueezeNet-1.1, adapted to small images) on the same data with plain
cross-entropy (cached), makes L-inf PGD examples from each and from the
reference, and scores every network on every source's examples, with the
worst case over sources. Runs the search first if the study has not got
``--generations`` generations yet. Stored as ``gmsearch:results:table2``.

Run::

    python examples/table2_transfer.py --quick
    python examples/table2_transfer.py --sources resnet18 vgg11_bn --source-epochs 30
"""

from __future__ import annotations

from collections.abc import Sequence

from gmsearch import paper as ex


def main(argv: Sequence[str] | None = None) -> int:
    parser = ex.experiment_parser(__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=["resnet18", "vgg11_bn", "densenet121", "squeezenet1_1"],
                        help="source architectures (gmsearch.architectures names)")
    parser.add_argument("--source-epochs", type=int, default=None, help="training epochs of each source")
    args = parser.parse_args(argv)
    exp = ex.Experiment.from_args(args)
    table, matrix = ex.table2(exp, sources=args.sources)
    print(exp.header())
    print(table)
    print()
    print(matrix.to_text(title="The same as a transfer matrix (rows: targets, columns: sources):"))
    exp.record(table)
    exp.log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
