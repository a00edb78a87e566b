"""(2) PGD adversarial-set generation vs torchattacks' PGD: same model, data and settings.

L-inf PGD with eps 0.1, step 0.025, 10 steps (the reference keeps some
20-25% of the test split, so accuracy under attack discriminates) and no
random start, so both must produce the same examples up to rounding:
throughput in images per second and accuracy under attack of each.
"""

from __future__ import annotations

import torch

import gmsearch as gms
from benchmarks.common import Context, Line, at_least, interleaved, log

EPS, ALPHA, STEPS = 0.1, 0.025, 10


def run(ctx: Context) -> list[Line]:
    import torchattacks

    model = ctx.reference()
    data = ctx.digits()
    x, y = data.test.x, data.test.y
    if ctx.cuda:  # a GPU-sized batch: the test split repeated
        x, y = x.repeat(12, 1, 1, 1), y.repeat(12)
    elif ctx.quick:
        x, y = x[:128], y[:128]
    ours = gms.attacks.create("pgd_linf", eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False, batch_size=len(x))
    theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False)
    results: dict[str, torch.Tensor] = {}

    def run_ours() -> None:
        results["gmsearch"] = ours(model, x, y)

    def run_theirs() -> None:
        results["torchattacks"] = theirs(x, y)

    repeats = 3 if ctx.quick else 7
    t = interleaved({"gmsearch": run_ours, "torchattacks": run_theirs}, device=ctx.device, repeats=repeats)
    log("pgd: " + ", ".join(f"{k} {v * 1e3:.1f} ms for {len(x)} images" for k, v in t.items()))
    acc = {k: gms.accuracy(model, v, y) for k, v in results.items()}
    gap = float((results["gmsearch"] - results["torchattacks"]).abs().max())
    same = abs(acc["gmsearch"] - acc["torchattacks"]) <= 1.0 / len(x) + 1e-9
    speed = t["torchattacks"] / t["gmsearch"]
    ips = len(x) / t["gmsearch"]
    return [
        at_least("pgd_throughput_vs_torchattacks", speed, 1.0, note=f" ({ips:.0f} images/s)"),
        Line("pgd_adv_acc_gmsearch_vs_torchattacks",
             f"{acc['gmsearch']:.4f} vs {acc['torchattacks']:.4f} (clean {gms.accuracy(model, x, y):.4f}; "
             f"largest pixel difference {gap:.1e})",
             "equal, within one image", same),
    ]
