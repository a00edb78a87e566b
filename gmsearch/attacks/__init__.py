"""Attacks: one registry of adversarial attacks (one attack a file) and the cached adversarial sets
made from the reference.

Every attack is a class whose hyper-parameters are keyword-only fields and has
one call signature, ``attack(model, x, y) -> x_adv``; plugins register with
``@gms.attacks.register(name)``.
"""

from __future__ import annotations

from gmsearch.attacks._base import Attack, constructor_params, create, get, names, register, registry
from gmsearch.attacks.adversarial_set import AdversarialSet, adversarial_set
from gmsearch.attacks.bsr import BSR
from gmsearch.attacks.budgets import default_budget
from gmsearch.attacks.ensemble import EnsembleAttack, ModelEnsemble, model_fingerprint
from gmsearch.attacks.fgsm import FGSM
from gmsearch.attacks.mifgsm import MIFGSM
from gmsearch.attacks.nifgsm import NIFGSM
from gmsearch.attacks.pgd import PGDL2, PGDLinf
from gmsearch.attacks.sgm import SGM
from gmsearch.attacks.sia import SIA
from gmsearch.attacks.sinifgsm import SINIFGSM
from gmsearch.attacks.tifgsm import TIFGSM
from gmsearch.attacks.vmifgsm import VMIFGSM

__all__ = [
    "BSR",
    "FGSM",
    "MIFGSM",
    "NIFGSM",
    "PGDL2",
    "SGM",
    "SIA",
    "SINIFGSM",
    "TIFGSM",
    "VMIFGSM",
    "AdversarialSet",
    "Attack",
    "EnsembleAttack",
    "ModelEnsemble",
    "PGDLinf",
    "adversarial_set",
    "constructor_params",
    "create",
    "default_budget",
    "get",
    "model_fingerprint",
    "names",
    "register",
    "registry",
]
