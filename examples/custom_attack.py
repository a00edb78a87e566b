"""Add a new attack in a few lines, generate a cached adversarial set with it, and use it in a study.

The attack below is the L2 fast gradient method: one step of length ``eps``
along the normalised input gradient. Registering it makes it available by
name everywhere gmsearch takes an attack (``attacks.create("fgm_l2")``,
configs, ``gmsearch plugins``).

Run::

    python examples/custom_attack.py
"""

from __future__ import annotations

import tempfile

import optuna
import torch
from torch import Tensor, nn

import gmsearch as gms
from gmsearch import attacks

optuna.logging.set_verbosity(optuna.logging.WARNING)


@attacks.register("fgm_l2")
class FGML2(attacks.Attack):
    """Fast gradient method, L2: one normalised-gradient step of length eps."""

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Tensor:
        grad = self.input_grad(model, x, y, generator)
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + self.eps * grad / norms).clamp(0, 1)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = gms.datasets.load("digits", seed=0, image_size=8)
        reference = gms.references.get("hand_a", data, epochs=5, cache_dir=tmp)

        attack = gms.attacks.create("fgm_l2", eps=1.0)
        adv = gms.attacks.adversarial_set(reference, data.test.x, data.test.y, attack, cache_dir=tmp, tag="test")
        print(f"{adv.attack}: reference accuracy {gms.accuracy(reference, data.test.x, data.test.y):.3f} clean, "
              f"{gms.accuracy(reference, adv.x, adv.y):.3f} under attack")

        # The new attack, by name, drives a (tiny) evolutionary search.
        objective = gms.GMObjective(
            data, reference=reference, attack="fgm_l2", attack_params={"eps": 1.0}, epochs=2, cache_dir=tmp
        )
        sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, seed=0, epoch_schedule=None)
        study = gms.create_study(study_name="custom-attack", storage=None, sampler=sampler)
        study.optimize(objective, n_trials=gms.n_trials_for(generations=1, population_size=2, n_children=1))
        for trial in gms.population(study):
            print(
                f"trial {trial.number}: fitness {trial.value:.3f} (clean {trial.user_attrs['clean_acc']:.3f}, "
                f"adv {trial.user_attrs['adv_acc']:.3f})  {trial.user_attrs['gmsearch:architecture']}"
            )


if __name__ == "__main__":
    main()
