"""Weight inheritance (``inherit = true``) when the parent's weights cannot be read: the child trains from scratch."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest

import gmsearch as gms
from gmsearch.search.schema import INHERITED_KEY, PARENT_KEY, WEIGHTS_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_child_whose_parent_weights_are_missing_or_damaged_trains_from_scratch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = gms.datasets.load("digits", seed=0, image_size=8)
    ref = gms.references.get("hand_a", data, epochs=1, cache_dir=tmp_path / "cache")
    objective = gms.GMObjective(data, reference=ref, attack_params={"eps": 0.2, "alpha": 0.05, "steps": 1},
                                epochs=2, cache_dir=tmp_path / "cache", artifact_store=tmp_path / "art",
                                inherit=True, inherit_epochs=0.5)
    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, seed=0, mutations_per_child=1,
                                        epoch_schedule=None)
    study = gms.create_study(study_name="inherit", storage=None, sampler=sampler)
    study.optimize(objective, n_trials=2)  # the parents, with their weights saved
    files = sorted(f for f in (tmp_path / "art").rglob("*") if f.is_file())
    assert len(files) == 2 and all(WEIGHTS_KEY in t.user_attrs for t in study.trials)
    files[0].unlink()  # one parent's weights deleted, the other's damaged
    files[1].write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="gmsearch.search.objective"):
        study.optimize(objective, n_trials=2)  # two children of those parents
    children = [t for t in study.trials if t.user_attrs.get(PARENT_KEY) is not None]
    assert len(children) == 2
    for child in children:
        assert child.state == optuna.trial.TrialState.COMPLETE
        assert child.user_attrs[INHERITED_KEY] == [] and child.user_attrs["epochs"] == 2  # from scratch, all epochs
    assert sum("training from scratch" in r.getMessage() for r in caplog.records) == 2
