"""Attacks: one registry of adversarial attacks and the cached adversarial sets made from the reference.

Every attack is a class with its hyper-parameters as constructor arguments and
one call signature, ``attack(model, x, y) -> x_adv``; plugins register with
``@gms.attacks.register(name)``.
"""

from __future__ import annotations

from gmsearch.attacks._base import (
    FGSM,
    MIFGSM,
    PGDL2,
    AdversarialSet,
    Attack,
    EnsembleAttack,
    ModelEnsemble,
    PGDLinf,
    adversarial_set,
    create,
    default_budget,
    get,
    model_fingerprint,
    names,
    register,
    registry,
)

__all__ = [
    "FGSM",
    "MIFGSM",
    "PGDL2",
    "AdversarialSet",
    "Attack",
    "EnsembleAttack",
    "ModelEnsemble",
    "PGDLinf",
    "adversarial_set",
    "create",
    "default_budget",
    "get",
    "model_fingerprint",
    "names",
    "register",
    "registry",
]
