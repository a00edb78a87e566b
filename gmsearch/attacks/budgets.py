"""The default attack budget for a dataset's kind (grey digit sets or colour images)."""

from __future__ import annotations

import math
from typing import Any

from gmsearch.attacks._base import _check_int, get


def default_budget(name: str, *, in_channels: int, image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Default budget for attack ``name`` on images with ``in_channels`` channels.

    RGB sets get Madry et al.'s L-inf PGD budget (eps 8/255, step 2/255, 10
    steps). Grey digit sets need more: measured on digits at 16x16 with a
    hand_a-like reference (see DESIGN.md, "Attack budgets that discriminate"),
    L-inf eps 0.1 leaves an independently trained copy of the reference at
    47% and a GM-trained copy at the 99.7% ceiling, while eps 0.2 (step
    eps/4) gives 1% and 90%, so 0.2 is the grey default. L2 budgets are the
    usual ones from the literature (0.5 for CIFAR-10, 2.0 for MNIST), not
    measured here; they are meant for 28x28 grey and 32x32 colour images, so
    with ``image_size`` given they are rescaled by ``sqrt(H * W) / 28`` (grey)
    or ``/ 32`` (colour): an L2 ball grows with the square root of the pixel
    count, and this keeps the same per-pixel budget on resized images (16x16
    digits get eps 2.0 * 16 / 28 = 1.14).

    Returns:
        Keyword arguments for :func:`create` (``{}`` for attacks without a default).
    """
    grey = _check_int("in_channels", in_channels, low=1) == 1
    linf: dict[str, Any] = (
        {"eps": 0.2, "alpha": 0.05, "steps": 10} if grey else {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10}
    )
    budgets: dict[str, dict[str, Any]] = {
        "pgd_linf": linf,
        # the transfer attacks: MI-FGSM's budget (their own defaults for everything else)
        **dict.fromkeys(("mi_fgsm", "ni_fgsm", "sini_fgsm", "vmi_fgsm", "ti_fgsm", "bsr", "sia", "sgm"), linf),
        "fgsm": {"eps": linf["eps"]},
        "pgd_l2": (
            {"eps": 2.0, "alpha": 0.5, "steps": 10} if grey else {"eps": 0.5, "alpha": 0.125, "steps": 10}
        ),
    }
    get(name)  # unknown names fail with the list of available ones
    budget = dict(budgets.get(name, {}))
    if name == "pgd_l2" and image_size is not None:
        scale = math.sqrt(image_size[0] * image_size[1]) / (28 if grey else 32)
        budget["eps"] = round(budget["eps"] * scale, 4)
        budget["alpha"] = round(budget["alpha"] * scale, 4)
    return budget
