"""Register a new mutation operator in a few lines and watch it being picked.

The operator below widens every conv block to 128 channels. Once registered it
is one of ``mutations.names()``, so ``mutations.mutate`` (and the sampler's
DEAP toolbox) can draw it; restricting ``names=[...]`` makes it the only choice.

Run: ``python examples/custom_mutation.py``
"""

from __future__ import annotations

import random
from dataclasses import replace

import optuna

import gmsearch as gms
from gmsearch.nets import zoo
from gmsearch.nets.genome import Genome
from gmsearch.search import mutations


@mutations.register("widen_convs")
def widen_convs(genome: Genome, rng: random.Random) -> Genome:
    """Set every conv and sconv block to 128 output channels."""
    blocks = tuple(
        replace(b, out_channels=128) if b.kind in ("conv", "sconv") else b for b in genome.blocks
    )
    return Genome(blocks, head=genome.head)


def main() -> None:
    parent = zoo.genome("hand_a")
    rng = random.Random(0)
    print("registered:", "widen_convs" in mutations.names())
    print("parent:    ", parent.summary())

    child = mutations.mutate(parent, rng, names=["widen_convs"])
    print("only ours: ", child.summary())
    assert all(b.out_channels == 128 for b in child.blocks if b.kind == "conv")

    # Among all operators, weighted so ours is drawn about half the time.
    weights = dict.fromkeys(mutations.names(), 1.0)
    weights["widen_convs"] = len(weights) - 1.0
    child = mutations.mutate(parent, rng, weights=weights)
    print("weighted:  ", child.summary())

    # The DEAP toolbox the sampler uses binds it too.
    toolbox = mutations.toolbox(k=(4, 5), names=["widen_convs", "add_sum", "add_pool"])
    print("aggressive:", toolbox.aggressive(parent, rng).summary())
    print("toolbox alias:", toolbox.widen_convs(parent, rng).summary())

    # The sampler draws it too: a quick search with a synthetic fitness (no training).
    def objective(trial: optuna.Trial) -> float:
        genome = gms.genome_of(trial)
        return sum(b.out_channels or 0 for b in genome.blocks) / 1000 - 0.1 * genome.num_blocks

    sampler = gms.NicheEvolutionSampler(
        population_size=3, n_children=2, mutation_weights={"widen_convs": 10.0}, seed=0
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=gms.n_trials_for(generations=3, population_size=3, n_children=2))
    wide = [
        t for t in study.trials
        if t.user_attrs["gmsearch:parent"] is not None
        and all(b.out_channels == 128 for b in gms.genome_of(t).blocks if b.kind in ("conv", "sconv"))
    ]
    print(f"sampler: {len(wide)} of {len(study.trials) - 3} children have only 128-channel convs")
    print("best:", study.best_trial.user_attrs["gmsearch:architecture"])


if __name__ == "__main__":
    main()
