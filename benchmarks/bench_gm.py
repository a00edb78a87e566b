"""(1) A GM training step vs a plain cross-entropy step of the same net and batch.

Both are :func:`gmsearch.training.train_step`, the step :func:`gms.train` runs:
cached reference gradients, one shared forward pass, an exact double backward.
Also shown: the same GM step with PyTorch's own double backward
(``fast_double_backward=False``), and how far the two differ; and end to end,
``gms.train`` with ``lam=1`` vs ``lam=0`` on digits for ``hand_a`` and ``hand_b``
(evaluation included; target 2.0x, the arithmetic floor of an exact GM step).
"""

from __future__ import annotations

import copy
import functools

import torch

import gmsearch as gms
from benchmarks.common import Context, Line, at_most, interleaved, log
from gmsearch.training import gm_loss as losses
from gmsearch.training._graphs import GraphedStep
from gmsearch.training.loop import train_step

TARGET = 2.2
TARGET_END_TO_END = 2.0


def _gm_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             g: torch.Tensor, *, fused: bool) -> None:
    ce, gm = losses.gm_objective(net, x, y, g, fast_double_backward=fused)
    opt.zero_grad(set_to_none=True)
    (ce + gm).backward(inputs=list(net.parameters()))
    opt.step()


def _case(ctx: Context, label: str, x: torch.Tensor, y: torch.Tensor, channels: int, size: int) -> list[Line]:
    torch.manual_seed(ctx.seed)
    base = gms.build(gms.zoo.genome("hand_a"), channels, 10, size).to(ctx.device)
    ref = gms.build(gms.zoo.genome("hand_b"), channels, 10, size).to(ctx.device).eval()
    g = losses.input_gradients(ref, x, y).detach()
    nets = {k: copy.deepcopy(base).train() for k in ("ce", "gm", "gm_unfused")}
    opts = {k: torch.optim.Adam(n.parameters(), **({"fused": True} if ctx.cuda else {})) for k, n in nets.items()}
    fns = {
        "ce": lambda: train_step(nets["ce"], opts["ce"], x, y, None),
        "gm": lambda: train_step(nets["gm"], opts["gm"], x, y, g),
        "gm_unfused": lambda: _gm_step(nets["gm_unfused"], opts["gm_unfused"], x, y, g, fused=False),
    }
    graphed: dict[str, GraphedStep] = {}
    if ctx.cuda:  # what gms.train runs on CUDA: channels_last images and network
        cl = torch.channels_last
        x_cl, g_cl = x.contiguous(memory_format=cl), g.contiguous(memory_format=cl)
        for k in ("ce_cl", "gm_cl"):
            nets[k] = copy.deepcopy(base).train().to(memory_format=cl)
            opts[k] = torch.optim.Adam(nets[k].parameters(), fused=True)
        fns["ce_cl"] = lambda: train_step(nets["ce_cl"], opts["ce_cl"], x_cl, y, None)
        fns["gm_cl"] = lambda: train_step(nets["gm_cl"], opts["gm_cl"], x_cl, y, g_cl)
        # the same steps captured in CUDA graphs (what gms.train(cuda_graph=True) replays)
        for k in ("ce_graph", "gm_graph"):
            nets[k] = copy.deepcopy(base).train().to(memory_format=cl)
            opts[k] = torch.optim.Adam(nets[k].parameters(), fused=True, capturable=True)
            graphed[k] = GraphedStep(functools.partial(train_step, nets[k], opts[k]), len(x),
                                     list(nets[k].parameters()))
        fns["ce_graph"] = lambda: graphed["ce_graph"](x_cl, y, None)
        fns["gm_graph"] = lambda: graphed["gm_graph"](x_cl, y, g_cl)
    repeats, inner = (3, 2) if ctx.quick else (15, 3)
    if ctx.cuda:
        repeats, inner = 20, 10
    t = interleaved(fns, device=ctx.device, repeats=repeats, inner=inner, warmup=2)
    log(f"gm step {label}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()))

    # Exactness of the fast double backward on this net (float32 here, float64 in the tests).
    probe = copy.deepcopy(base).train()
    grads = []
    for fused in (True, False):
        net = copy.deepcopy(probe)
        ce, gm = losses.gm_objective(net, x, y, g, fast_double_backward=fused)
        grads.append(torch.cat([p.flatten() for p in torch.autograd.grad(ce + gm, list(net.parameters()))]))
    rel = float((grads[0] - grads[1]).norm() / grads[1].norm())
    ms = f"{t['gm'] * 1e3:.2f} vs {t['ce'] * 1e3:.2f} ms"
    extra = []
    if ctx.cuda:
        extra = [
            at_most(f"gm_step_vs_ce_channels_last[{label}]", t["gm_cl"] / t["ce_cl"], TARGET,
                    note=f" ({t['gm_cl'] * 1e3:.2f} vs {t['ce_cl'] * 1e3:.2f} ms)"),
            Line(f"channels_last_vs_nchw[{label}]", f"ce {t['ce'] / t['ce_cl']:.2f}x, gm {t['gm'] / t['gm_cl']:.2f}x"),
        ]
        if all(graphed[k].failed is None and graphed[k].replays for k in graphed):
            extra += [
                at_most(f"gm_step_vs_ce_cuda_graph[{label}]", t["gm_graph"] / t["ce_graph"], TARGET,
                        note=f" ({t['gm_graph'] * 1e3:.2f} vs {t['ce_graph'] * 1e3:.2f} ms)"),
                Line(f"cuda_graph_step_speedup[{label}]",
                     f"gm {t['gm_cl'] / t['gm_graph']:.2f}x, ce {t['ce_cl'] / t['ce_graph']:.2f}x "
                     f"(capture: gm {graphed['gm_graph'].capture_seconds:.3f} s, "
                     f"ce {graphed['ce_graph'].capture_seconds:.3f} s)"),
            ]
        else:
            log(f"gm step {label}: CUDA graph not used: " + ", ".join(f"{k} {v.failed}" for k, v in graphed.items()))
    return [
        at_most(f"gm_step_vs_ce[{label}]", t["gm"] / t["ce"], TARGET, note=f" ({ms})"),
        *extra,
        Line(f"gm_step_vs_ce_pytorch_double_backward[{label}]", f"{t['gm_unfused'] / t['ce']:.2f}x"),
        Line(f"gm_fast_double_backward_grad_rel_diff[{label}]", f"{rel:.1e}", "float32 rounding, < 1e-4", rel < 1e-4),
    ]


def _precision(ctx: Context) -> list[Line]:
    """GM parameter gradients under float32 / TF32 / bf16 autocast vs a float64 reference (CUDA only)."""
    torch.manual_seed(ctx.seed)
    data = ctx.synthetic(512, (3, 32, 32))
    x, y = data.train.x[:128], data.train.y[:128]
    base = gms.build(gms.zoo.genome("hand_a"), 3, 10, 32).to(ctx.device).train()
    ref = gms.build(gms.zoo.genome("hand_b"), 3, 10, 32).to(ctx.device).eval()

    def grads(dtype: torch.dtype, *, tf32: bool, bf16: bool) -> torch.Tensor:
        old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            net, r = copy.deepcopy(base).to(dtype), copy.deepcopy(ref).to(dtype)
            xx = x.to(dtype)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                g = losses.input_gradients(r, xx, y)
                ce, gm = losses.gm_objective(net, xx, y, g)
                out = torch.autograd.grad(ce + gm, list(net.parameters()))
            return torch.cat([p.flatten().double() for p in out])
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old

    exact = grads(torch.float64, tf32=False, bf16=False)
    lines = []
    for label, kw in (("fp32", {"tf32": False, "bf16": False}), ("tf32", {"tf32": True, "bf16": False}),
                      ("bf16_autocast", {"tf32": True, "bf16": True})):
        try:
            rel = float((grads(torch.float32, **kw) - exact).norm() / exact.norm())
            lines.append(Line(f"gm_grad_rel_error_vs_fp64[{label}]", f"{rel:.1e}"))
        except Exception as exc:  # bf16 double backward may not be supported everywhere
            lines.append(Line(f"gm_grad_rel_error_vs_fp64[{label}]", f"failed: {type(exc).__name__}: {exc}"[:300]))
    return lines


def _end_to_end(ctx: Context, arch: str) -> Line:
    """``gms.train`` with ``lam=1`` vs ``lam=0``: the same net, data, seed and epochs (reference gradients cached)."""
    data, ref = ctx.digits(), ctx.reference()
    epochs = 1 if ctx.quick else 2
    torch.manual_seed(ctx.seed)
    base = gms.build(gms.zoo.genome(arch), 1, 10, 16).to(ctx.device)

    def fit(lam: float) -> None:
        gms.train(copy.deepcopy(base), data, reference=ref, lam=lam, epochs=epochs, seed=ctx.seed,
                  device=ctx.device, cache_dir=ctx.workdir / "cache")

    t = interleaved({"ce": lambda: fit(0.0), "gm": lambda: fit(1.0)}, device=ctx.device,
                    repeats=3 if ctx.quick else 5)
    log(f"gms.train digits {arch} {epochs} epoch(s): lam=0 {t['ce']:.2f} s, lam=1 {t['gm']:.2f} s")
    return at_most(f"gms_train_lam1_vs_lam0[digits {arch}]", t["gm"] / t["ce"], TARGET_END_TO_END,
                   note=f" ({t['gm']:.2f} vs {t['ce']:.2f} s, evaluation included)")


def run(ctx: Context) -> list[Line]:
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True  # as gms.train sets it
    data = ctx.digits()
    lines = _case(ctx, "digits 1x16x16 b128 hand_a", data.train.x[:128], data.train.y[:128], 1, 16)
    lines += [_end_to_end(ctx, arch) for arch in ("hand_a", "hand_b")]
    if ctx.cuda:
        cifar = ctx.synthetic(512, (3, 32, 32))
        lines += _case(ctx, "3x32x32 b128 hand_a", cifar.train.x[:128], cifar.train.y[:128], 3, 32)
        lines += _precision(ctx)
    return lines
