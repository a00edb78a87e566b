"""Integrated-gradients attribution maps and how far apart two networks' maps are (paper Fig. 3).

The paper shows, for one test image, the integrated gradients (Sundararajan
et al. 2017) of the reference, Ref+GM and NE+GM networks "using the relative
values ranging in [-1, 1]" (red negative, green positive), and a "total pixel
distance" to the reference's map (Ref+GM 0.687, NE+GM 1.297) that it does not
define further. Here:

- :func:`integrated_gradients` computes IG through Captum for the logit of
  each image's label, from a black (all-zero) baseline by default. By
  default the channels are summed (one value per pixel, as Fig. 3 colours
  each pixel once) and each image's map is divided by its largest absolute
  value, so it spans ``[-1, 1]`` with the sign kept.
- :func:`total_pixel_distance` is the **mean absolute difference per pixel
  between two normalised maps, averaged over images**:
  ``mean_n mean_p |a[n, p] - b[n, p]|``, in ``[0, 2]``. It is 0 for
  identical maps, 2 for maps of opposite sign and full magnitude everywhere,
  symmetric, and it obeys the triangle inequality (an L1 metric). The mean,
  not the sum, over pixels is used so values compare across image sizes
  (16x16 digits vs 32x32 CIFAR-10) and numbers of images; ``reduction="sum"``
  gives the L1 sum per image instead. Neither reproduces the paper's
  absolute values (0.687, 1.297), whose normalisation is unknown; compare
  the *ordering* (NE+GM farther from the reference than Ref+GM).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
    >>> maps = integrated_gradients(net, x, y, steps=16)
    >>> maps.shape, bool(maps.abs().max() <= 1)
    (torch.Size([2, 4, 4]), True)
    >>> total_pixel_distance(maps, maps)
    0.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "ATTRIBUTION_COLORSCALE",
    "attribution_figure",
    "integrated_gradients",
    "normalize_maps",
    "total_pixel_distance",
    "write_attribution_png",
]

#: Red for negative, white for zero, green for positive attribution (the colours of Fig. 3).
ATTRIBUTION_COLORSCALE: list[list[Any]] = [[0.0, "rgb(190,20,20)"], [0.5, "rgb(255,255,255)"], [1.0, "rgb(20,140,40)"]]


def normalize_maps(maps: Tensor) -> Tensor:
    """Divide each image's map (first axis) by its largest absolute value, so it spans ``[-1, 1]``.

    An all-zero map stays zero.
    """
    flat = maps.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / flat.view(-1, *([1] * (maps.dim() - 1)))


def integrated_gradients(
    net: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    baseline: float | Tensor = 0.0,
    steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    normalize: bool = True,
    reduce_channels: bool = True,
) -> Tensor:
    """Integrated gradients of ``net``'s logit for label ``y``, per image, through Captum.

    ``IG_i(x) = (x_i - b_i) * integral_0^1 d f_y(b + a (x - b)) / d x_i da``,
    approximated with ``steps`` points. Before normalisation the attributions
    of an image sum to about ``f_y(x) - f_y(baseline)`` (completeness).

    Args:
        net: A classifier returning logits (put in eval mode for the call; its mode is restored).
        x: Images ``(N, C, H, W)`` in ``[0, 1]`` on ``net``'s device.
        y: The label whose logit is attributed, per image (default: ``net``'s prediction).
        baseline: A constant or a tensor broadcastable to ``x`` (default black, 0).
        steps: Points of the path integral (Captum's ``n_steps``).
        method: Captum's integration rule (``"gausslegendre"``, ``"riemann_trapezoid"``, ...).
        internal_batch_size: Captum's chunk size for the ``N * steps`` forward passes.
        normalize: Divide each image's map by its largest absolute value (``[-1, 1]``, Fig. 3).
        reduce_channels: Sum over channels, one value per pixel: ``(N, H, W)``;
            otherwise ``(N, C, H, W)``.

    Returns:
        The attribution maps, detached, on ``x``'s device.
    """
    from captum.attr import IntegratedGradients

    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    was_training = net.training
    net.eval()
    try:
        if y is None:
            with torch.no_grad():
                y = net(x).argmax(dim=1)
        target = y.to(x.device)
        base = baseline if isinstance(baseline, Tensor) else torch.full_like(x, float(baseline))
        ig = IntegratedGradients(net)
        attributions = ig.attribute(
            x.detach(),
            baselines=base.to(x.device).expand_as(x),
            target=target,
            n_steps=steps,
            method=method,
            internal_batch_size=internal_batch_size,
        )
    finally:
        net.train(was_training)
    out = attributions.detach()
    if reduce_channels:
        out = out.sum(dim=1)
    return normalize_maps(out) if normalize else out


def total_pixel_distance(
    attr_a: Tensor, attr_b: Tensor, *, reduction: Literal["mean", "sum"] = "mean"
) -> float:
    """Distance between two sets of (normalised) attribution maps, as defined in the module docstring.

    Args:
        attr_a: Maps ``(N, H, W)`` or ``(N, C, H, W)``, normally from
            :func:`integrated_gradients` (values in ``[-1, 1]``).
        attr_b: Maps of the same images from another network, same shape.
        reduction: ``"mean"`` (default): mean absolute difference per pixel,
            in ``[0, 2]`` for normalised maps; ``"sum"``: the L1 distance of
            each image's maps (sum over pixels). Either way averaged over images.

    Returns:
        The distance; 0 for identical maps, symmetric in its arguments.
    """
    if attr_a.shape != attr_b.shape:
        raise ValueError(f"attribution maps differ in shape: {tuple(attr_a.shape)} vs {tuple(attr_b.shape)}")
    if attr_a.dim() < 2 or attr_a.shape[0] == 0:
        raise ValueError(f"need a batch of maps (N, H, W) with N >= 1, got shape {tuple(attr_a.shape)}")
    diff = (attr_a.to(attr_b.device) - attr_b).abs().flatten(1)
    if reduction == "mean":
        per_image = diff.mean(dim=1)
    elif reduction == "sum":
        per_image = diff.sum(dim=1)
    else:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return per_image.mean().item()


def _image_for_display(image: Tensor) -> Tensor:
    """``(H, W)`` grey or ``(H, W, 3)`` RGB in ``[0, 1]``, on the CPU."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.dim() == 3:
        return image[0] if image.shape[0] == 1 else image[:3].permute(1, 2, 0)
    return image


def _as_maps(maps: Tensor) -> Tensor:
    return maps.detach().float().cpu() if maps.dim() == 3 else maps.detach().float().cpu().sum(dim=1)


def attribution_figure(
    images: Tensor,
    maps: Mapping[str, Tensor],
    *,
    reference: str | None = None,
    labels: Sequence[str] | None = None,
    title: str = "Integrated gradients (relative values in [-1, 1])",
) -> go.Figure:
    """A plotly figure in the layout of Fig. 3: one row per image, the input then each network's map.

    Args:
        images: The images ``(N, C, H, W)`` in ``[0, 1]``.
        maps: Normalised maps ``(N, H, W)`` per network name, e.g.
            ``{"Ref": ..., "Ref+GM": ..., "NE+GM": ...}``.
        reference: The name whose map the others are compared with (default:
            the first); its :func:`total_pixel_distance` to each is in the column titles.
        labels: One caption per image (e.g. its true label).
        title: Figure title.

    Returns:
        A ``plotly.graph_objects.Figure`` (``fig.write_html(path)`` saves it).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not maps:
        raise ValueError("maps is empty: pass at least one network's attribution maps")
    names = list(maps)
    ref = reference if reference is not None else names[0]
    if ref not in maps:
        raise ValueError(f"reference {ref!r} is not among the maps ({', '.join(names)})")
    cpu_maps = {k: _as_maps(v) for k, v in maps.items()}
    n = int(images.shape[0])
    for k, v in cpu_maps.items():
        if v.shape[0] != n:
            raise ValueError(f"maps[{k!r}] has {v.shape[0]} images, expected {n}")
    col_titles = ["input"] + [
        k if k == ref else f"{k}<br>distance to {ref} (shown): {total_pixel_distance(cpu_maps[k], cpu_maps[ref]):.3f}"
        for k in names
    ]
    fig = make_subplots(
        rows=n, cols=1 + len(names), subplot_titles=[t if r == 0 else "" for r in range(n) for t in col_titles],
        horizontal_spacing=0.02, vertical_spacing=0.04,
    )
    for row in range(n):
        shown = _image_for_display(images[row])
        if shown.dim() == 3:
            fig.add_trace(go.Image(z=(shown * 255).round().to(torch.uint8).numpy()), row=row + 1, col=1)
        else:
            fig.add_trace(
                go.Heatmap(z=shown.numpy(), colorscale="gray", zmin=0, zmax=1, showscale=False),
                row=row + 1, col=1,
            )
        for col, name in enumerate(names, start=2):
            fig.add_trace(
                go.Heatmap(
                    z=cpu_maps[name][row].numpy(), colorscale=ATTRIBUTION_COLORSCALE, zmin=-1, zmax=1,
                    showscale=row == 0 and col == len(names) + 1, name=name,
                    hovertemplate=f"{name}<br>x=%{{x}} y=%{{y}}<br>IG=%{{z:.3f}}<extra></extra>",
                ),
                row=row + 1, col=col,
            )
        if labels is not None:
            fig.update_yaxes(title_text=str(labels[row]), row=row + 1, col=1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(
        title=title, height=220 * n + 120, width=200 * (1 + len(names)) + 120,
        margin={"l": 60, "r": 20, "t": 110, "b": 20},
    )
    return fig


def write_attribution_png(
    path: str | Path,
    images: Tensor,
    maps: Mapping[str, Tensor],
    *,
    reference: str | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """The same grid as :func:`attribution_figure`, written as a PNG with matplotlib (no browser needed).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    names = list(maps)
    ref = reference if reference is not None else names[0]
    cpu_maps = {k: _as_maps(v) for k, v in maps.items()}
    cmap = LinearSegmentedColormap.from_list("ig", [(0.75, 0.08, 0.08), (1, 1, 1), (0.08, 0.55, 0.16)])
    n = int(images.shape[0])
    fig, axes = plt.subplots(n, 1 + len(names), figsize=(2.2 * (1 + len(names)), 2.2 * n + 0.4), squeeze=False)
    for row in range(n):
        shown = _image_for_display(images[row]).numpy()
        axes[row][0].imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
        if labels is not None:
            axes[row][0].set_ylabel(str(labels[row]))
        for col, name in enumerate(names, start=1):
            axes[row][col].imshow(cpu_maps[name][row].numpy(), cmap=cmap, vmin=-1, vmax=1)
    for col, name in enumerate(["input", *names]):
        suffix = ""
        if name in cpu_maps and name != ref:
            suffix = f"\nd={total_pixel_distance(cpu_maps[name], cpu_maps[ref]):.3f}"
        axes[0][col].set_title(name + suffix, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
