"""(3) Epoch time of ``gms.train`` vs a straightforward DataLoader training loop of the same net.

The baseline is the loop most tutorials write: ``DataLoader(TensorDataset)``
over host tensors with shuffling, each batch moved to the device, and a
validation pass through a DataLoader with a ``.item()`` per batch. Both train
the same network from the same initial weights for one epoch of plain
cross-entropy (the loop machinery is what differs) and measure validation
accuracy once. On CUDA also: ``gms.train`` with its step captured in a CUDA
graph (``cuda_graph=True``, the capture counted), with bf16 autocast, and
without ``channels_last``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import gmsearch as gms
from benchmarks.common import Context, Line, at_least, interleaved, log
from gmsearch.data import Dataset


def dataloader_epoch(net: torch.nn.Module, host: Dataset, device: torch.device, batch_size: int = 128) -> float:
    """One epoch the straightforward way from host tensors; returns validation accuracy."""
    train = DataLoader(TensorDataset(host.train.x, host.train.y), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(host.val.x, host.val.y), batch_size=1024)
    opt = torch.optim.Adam(net.parameters())
    net.train()
    for xb, yb in train:
        xb, yb = xb.to(device), yb.to(device)
        if len(xb) < 2:
            continue
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in val:
            xb, yb = xb.to(device), yb.to(device)
            correct += (net(xb).argmax(1) == yb).sum().item()
    return correct / len(val.dataset)  # type: ignore[arg-type]


def _case(ctx: Context, label: str, data: Dataset, target: float) -> list[Line]:
    c, h, _ = data.input_shape
    torch.manual_seed(ctx.seed)
    base = gms.build(gms.zoo.genome("hand_a"), c, 10, h).to(ctx.device)
    host = data.to("cpu")  # where a DataLoader reads from
    fns = {
        "gms.train": lambda: gms.train(copy.deepcopy(base), data, lam=0.0, epochs=1, device=ctx.device),
        "dataloader": lambda: dataloader_epoch(copy.deepcopy(base), host, ctx.device),
    }
    if ctx.cuda:
        fns["gms.train_bf16"] = lambda: gms.train(copy.deepcopy(base), data, lam=0.0, epochs=1, device=ctx.device,
                                                   amp=True)
        fns["gms.train_nchw"] = lambda: gms.train(copy.deepcopy(base), data, lam=0.0, epochs=1, device=ctx.device,
                                                   channels_last=False)
        # the step captured in a CUDA graph (its capture, once per call, is inside the epoch's time)
        fns["gms.train_graph"] = lambda: gms.train(copy.deepcopy(base), data, lam=0.0, epochs=1, device=ctx.device,
                                                    cuda_graph=True)
    repeats = 3 if ctx.quick else 7
    t = interleaved(fns, device=ctx.device, repeats=repeats)
    log(f"epoch {label}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in t.items()))
    lines = [at_least(f"epoch_speedup_vs_dataloader[{label}]", t["dataloader"] / t["gms.train"], target,
                      note=f" ({t['gms.train'] * 1e3:.0f} vs {t['dataloader'] * 1e3:.0f} ms)")]
    if ctx.cuda:
        lines.append(at_least(f"epoch_speedup_vs_dataloader[{label}, CUDA graph]",
                              t["dataloader"] / t["gms.train_graph"], target,
                              note=f" ({t['gms.train_graph'] * 1e3:.0f} vs {t['dataloader'] * 1e3:.0f} ms)"))
        lines.append(Line(f"epoch_bf16_autocast_vs_fp32[{label}]", f"{t['gms.train'] / t['gms.train_bf16']:.2f}x"))
        lines.append(Line(f"epoch_channels_last_vs_nchw[{label}]", f"{t['gms.train_nchw'] / t['gms.train']:.2f}x"))
        # bf16 changes the result only within noise? Same init, same batch order, 3 epochs each.
        accs = {}
        for amp in (False, True):
            torch.manual_seed(ctx.seed)
            net = copy.deepcopy(base)
            accs[amp] = gms.train(net, data, lam=0.0, epochs=3, device=ctx.device, amp=amp).final["val_acc"]
        lines.append(Line(f"epoch_val_acc_fp32_vs_bf16[{label}]", f"{accs[False]:.4f} vs {accs[True]:.4f}"))
    return lines


def run(ctx: Context) -> list[Line]:
    if ctx.cuda:
        n = 10_000 if ctx.quick else 50_000
        lines = _case(ctx, "digits 1x16x16", ctx.digits(), 1.0)
        return lines + _case(ctx, f"{n} x 3x32x32", ctx.synthetic(n, (3, 32, 32)), 2.0)
    return _case(ctx, "digits 1x16x16", ctx.digits(), 1.0)
