"""(2b) The transfer attacks vs torchattacks' versions, side by side: same model, data, settings and seed.

NI-, SI-NI-, VMI- and TI-FGSM against ``torchattacks.NIFGSM``, ``SINIFGSM``,
``VMIFGSM`` and ``TIFGSM`` (the global RNG seeded as the attack's generator,
so the random ones draw the same numbers): throughput ratio and accuracy under
attack of each. BSR, SIA and SGM have no torchattacks version; their cost is
shown against MI-FGSM's on the same inputs (BSR and SIA take the gradient of
20 copies a step; SGM only adds hooks, so it should cost what MI-FGSM costs on
the same genome net with two ``sum`` blocks).
The model is the digits reference behind a 3-to-1 channel average, because
torchattacks' TI-FGSM smooths exactly three channels. L-inf eps 0.1, step
0.025, 10 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import gmsearch as gms
from benchmarks.common import Context, Line, at_least, at_most, interleaved, log

BUDGET: dict[str, Any] = {"eps": 0.1, "alpha": 0.025, "steps": 10}


class _GreyInside(nn.Module):
    """A grey model seen as a colour one: the channels averaged first."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.mean(1, keepdim=True))


def run(ctx: Context) -> list[Line]:
    import torchattacks

    model = _GreyInside(ctx.reference())
    data = ctx.digits()
    x, y = data.test.x.repeat(1, 3, 1, 1), data.test.y
    if ctx.cuda:
        x, y = x.repeat(4, 1, 1, 1), y.repeat(4)
    else:
        x, y = x[: 16 if ctx.quick else 256], y[: 16 if ctx.quick else 256]
    n = len(x)
    ti = {"len_kernel": 5, "resize_rate": 0.9, "diversity_prob": 0.5}
    pairs: dict[str, tuple[dict[str, Any], Callable[[], Any]]] = {
        "ni_fgsm": ({}, lambda: torchattacks.NIFGSM(model, **BUDGET)),
        "sini_fgsm": ({"m": 5}, lambda: torchattacks.SINIFGSM(model, **BUDGET, m=5)),
        "vmi_fgsm": ({"N": 5}, lambda: torchattacks.VMIFGSM(model, **BUDGET, N=5)),
        "ti_fgsm": (ti, lambda: torchattacks.TIFGSM(model, **BUDGET, **ti)),
    }
    repeats = 2 if ctx.quick else 5
    lines: list[Line] = []
    for name, (params, reference) in pairs.items():
        ours, theirs = gms.attacks.create(name, **BUDGET, **params, batch_size=n, seed=3), reference()
        results: dict[str, Tensor] = {}

        def run_ours(ours: gms.attacks.Attack = ours, results: dict[str, Tensor] = results) -> None:
            results["gmsearch"] = ours(model, x, y)

        def run_theirs(theirs: Any = theirs, results: dict[str, Tensor] = results) -> None:
            torch.manual_seed(3)
            results["torchattacks"] = theirs(x, y)

        t = interleaved({"gmsearch": run_ours, "torchattacks": run_theirs}, device=ctx.device, repeats=repeats)
        log(f"{name}: " + ", ".join(f"{k} {v * 1e3:.1f} ms for {n} images" for k, v in t.items()))
        acc = {k: gms.accuracy(model, v, y) for k, v in results.items()}
        same = abs(acc["gmsearch"] - acc["torchattacks"]) <= 1.0 / n + 1e-9 or ctx.cuda  # GPU draws differ
        lines += [
            at_least(f"{name}_throughput_vs_torchattacks", t["torchattacks"] / t["gmsearch"], 1.0,
                     note=f" ({n / t['gmsearch']:.0f} images/s)"),
            Line(f"{name}_adv_acc_gmsearch_vs_torchattacks", f"{acc['gmsearch']:.4f} vs {acc['torchattacks']:.4f}",
                 "equal, within one image" + (" (CPU; a GPU generator draws other numbers)" if ctx.cuda else ""),
                 same),
        ]
    own = {name: gms.attacks.create(name, **BUDGET, batch_size=n) for name in ("mi_fgsm", "bsr", "sia", "sgm")}
    # SGM needs skip connections: it and MI-FGSM side by side on an (untrained) genome net with sum blocks.
    conv = lambda src, ch: gms.Block("conv", (src,), out_channels=ch, kernel_size=3)  # noqa: E731
    residual = gms.Genome((
        conv(-1, 32), conv(0, 32), gms.Block("sum", (1, 0)), gms.Block("pool", (2,), pool_type="max"),
        conv(3, 64), conv(4, 64), gms.Block("sum", (5, 3)),
    ))
    residual_net = _GreyInside(gms.nets.build(residual, 1, 10, 16)).to(ctx.device).eval()
    t = interleaved({
        "mi_fgsm": lambda: own["mi_fgsm"](model, x, y),
        "bsr": lambda: own["bsr"](model, x, y),
        "sia": lambda: own["sia"](model, x, y),
        "mi_fgsm_residual": lambda: own["mi_fgsm"](residual_net, x, y),
        "sgm_residual": lambda: own["sgm"](residual_net, x, y),
    }, device=ctx.device, repeats=repeats)
    log("transfer: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()))
    lines += [
        Line("bsr_cost_vs_mi_fgsm", f"{t['bsr'] / t['mi_fgsm']:.1f}x ({n / t['bsr']:.0f} images/s)",
             "info: 20 copies a step"),
        Line("sia_cost_vs_mi_fgsm", f"{t['sia'] / t['mi_fgsm']:.1f}x ({n / t['sia']:.0f} images/s)",
             "info: 20 copies a step"),
        at_most("sgm_cost_vs_mi_fgsm", t["sgm_residual"] / t["mi_fgsm_residual"], 1.15,
                note=f" ({n / t['sgm_residual']:.0f} images/s)"),
    ]
    return lines
