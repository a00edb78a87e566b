"""(7) Does ``torch.compile`` pay off on the first-order paths (evaluation, PGD) of a child?

Each child is a new architecture, so each would pay its own compilation.
Measured here for one child (``hand_a``): the compile time (first compiled
call minus an eager call), the time per call eager and compiled, and the
number of calls after which compiling breaks even, next to the calls a trial
makes (an evaluation of the validation split, clean and adversarial, per
epoch). The double-backward GM step is never compiled.
"""

from __future__ import annotations

import copy
import time

import torch

import gmsearch as gms
from benchmarks.common import Context, Line, interleaved, log, sync


def _first_call(fn: object, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    sync(device)
    return time.perf_counter() - t0


def run(ctx: Context) -> list[Line]:
    if ctx.quick and not ctx.cuda:
        return [Line("compile", "skipped in quick mode on CPU (compiling takes minutes on 2 cores)")]
    data = ctx.digits()
    x, y = data.val.x, data.val.y
    if ctx.cuda:
        x, y = x.repeat(8, 1, 1, 1), y.repeat(8)
    import torch._inductor.config as inductor_config

    inductor_config.force_disable_caches = True  # a new architecture finds nothing cached on disk
    torch.manual_seed(ctx.seed)
    eager = gms.build(gms.zoo.genome("hand_a"), 1, 10, 16).to(ctx.device).eval()
    compiled = torch.compile(copy.deepcopy(eager), dynamic=False)
    attack = gms.attacks.create("pgd_linf", eps=0.2, alpha=0.05, steps=10, random_start=False, batch_size=len(x))
    lines = []
    for what, make in (
        ("evaluation", lambda m: (lambda: gms.accuracy(m, x, y, batch_size=len(x)))),
        ("pgd", lambda m: (lambda: attack(m, x, y))),
    ):
        eager_fn, compiled_fn = make(eager), make(compiled)
        eager_fn()
        first = _first_call(compiled_fn, ctx.device)
        t = interleaved({"eager": eager_fn, "compiled": compiled_fn}, device=ctx.device, repeats=7,
                        inner=5 if ctx.cuda else 1, timer=time.perf_counter)
        compile_s = first - t["eager"]
        saved = t["eager"] - t["compiled"]
        calls = compile_s / saved if saved > 0 else float("inf")
        per_trial = "2 per epoch" if what == "evaluation" else "0 (adversarial sets come from the reference, once)"
        log(f"compile {what}: first call {first:.1f} s, eager {t['eager'] * 1e3:.2f} ms, "
            f"compiled {t['compiled'] * 1e3:.2f} ms")
        lines.append(Line(
            f"compile_{what}[hand_a, {len(x)} images]",
            f"compile {compile_s:.1f} s, {t['eager'] / t['compiled']:.2f}x per call "
            f"({t['eager'] * 1e3:.1f} -> {t['compiled'] * 1e3:.1f} ms), breaks even after "
            f"{calls:.0f} calls; a child makes {per_trial}",
            "pays off per child? " + ("no" if calls > 100 else "yes"),
        ))
    torch._dynamo.reset()
    return lines
