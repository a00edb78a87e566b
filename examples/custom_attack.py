"""Add a new attack in a few lines, then generate a cached adversarial set with it.

The attack below is the L2 fast gradient method: one step of length ``eps``
along the normalised input gradient. Registering it makes it available by
name everywhere gmsearch takes an attack (``attacks.create("fgm_l2")``,
configs, ``gmsearch plugins``).

Run::

    python examples/custom_attack.py
"""

from __future__ import annotations

import tempfile

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from gmsearch import attacks


@attacks.register("fgm_l2")
class FGML2(attacks.Attack):
    """Fast gradient method, L2: one normalised-gradient step of length eps."""

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> Tensor:
        grad = self.input_grad(model, x, y)
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + self.eps * grad / norms).clamp(0, 1)


def small_cnn() -> nn.Module:
    """A tiny CNN for 8x8 digits; it normalises its own [0, 1] inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # in [0, 1]
    y = torch.tensor(digits.target, dtype=torch.int64)
    x_train, y_train, x_test, y_test = x[300:], y[300:], x[:300], y[:300]

    model = small_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):  # a few seconds on a laptop CPU
        idx = torch.randint(0, len(x_train), (128,))
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        optimiser.step()
    model.eval()

    attack = attacks.create("fgm_l2", eps=1.5)
    with tempfile.TemporaryDirectory() as cache_dir:
        adv = attacks.adversarial_set(model, x_test, y_test, attack, cache_dir=cache_dir, tag="test")
        again = attacks.adversarial_set(model, x_test, y_test, attack, cache_dir=cache_dir, tag="test")
        assert torch.equal(adv.x, again.x)  # the second call loaded the cached file

    print(f"attack: {adv.attack}  source: {adv.source}")
    print(f"clean accuracy:       {accuracy(model, x_test, y_test):.3f}")
    print(f"adversarial accuracy: {accuracy(model, adv.x, adv.y):.3f}")
    # The same budget spent by a built-in, iterative attack, for comparison.
    pgd = attacks.create("pgd_l2", eps=1.5, alpha=0.375, steps=10)
    print(f"{pgd.describe()}: {accuracy(model, pgd(model, x_test, y_test), y_test):.3f}")


if __name__ == "__main__":
    main()
