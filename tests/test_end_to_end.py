"""End to end on real digits: reference, adversarial sets, GM training, evolution, table, resume."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import gmsearch as gms
from gmsearch.quickstart import run_quickstart
from gmsearch.search import schema
from gmsearch.search.schema import FAIL_REASON_KEY, GENOME_KEY, WEIGHTS_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_tiny_quickstart_runs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kwargs = dict(
        workdir=tmp_path, generations=1, population_size=2, n_children=1, epochs=1, reference_epochs=3,
        image_size=8, attack_steps=3, show_progress_bar=False, max_params=20_000,
    )
    first = run_quickstart(**kwargs)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert [r.name for r in first.rows] == ["Ref", "Ref+GM", "NE+GM"]
    for row in first.rows:
        assert 0.0 <= row.clean_acc <= 1.0 and 0.0 <= row.adv_acc <= 1.0
    ref = first.rows[0]
    assert ref.clean_acc > 0.5, "the reference learned the digits"
    assert ref.adv_acc < ref.clean_acc, "white-box PGD hurts the reference"
    assert "Ref+GM" in out and "NE+GM" in out and "pgd_linf" in out
    assert first.history_html.exists() and "plotly" in first.history_html.read_text()[:20000].lower()

    study = first.study
    trials = study.get_trials()
    assert len(trials) == gms.n_trials_for(1, 2, 1) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert {"clean_acc", "adv_acc", "params", WEIGHTS_KEY} <= set(t.user_attrs)
        assert t.value == pytest.approx(min(t.user_attrs["clean_acc"], t.user_attrs["adv_acc"]))

    # running again resumes the stored study and adds a generation
    second = run_quickstart(**kwargs)  # type: ignore[arg-type]
    assert len(second.study.get_trials()) == gms.n_trials_for(2, 2, 1) == 6
    assert [t.system_attrs for t in second.study.get_trials()[:4]] == [t.system_attrs for t in trials]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[gms.GMObjective, Path]:
    tmp = tmp_path_factory.mktemp("e2e")
    data = gms.datasets.load("digits", seed=0, image_size=8)
    ref = gms.references.get("hand_a", data, epochs=3, cache_dir=tmp / "cache")
    objective = gms.GMObjective(
        data, reference=ref, attack="pgd_linf", attack_params={"eps": 0.2, "alpha": 0.05, "steps": 3},
        epochs=1, cache_dir=tmp / "cache", artifact_store=tmp / "artifacts",
    )
    return objective, tmp


def test_reference_cache_loads_instead_of_training(setup: tuple[gms.GMObjective, Path]) -> None:
    objective, tmp = setup
    files = list((tmp / "cache" / "references").glob("*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = gms.references.get("hand_a", objective.data, epochs=3, cache_dir=tmp / "cache")
    assert files[0].stat().st_mtime_ns == mtime
    for a, b in zip(again.state_dict().values(), objective.reference.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())
    assert again.clean_acc == objective.reference.clean_acc
    assert not any(p.requires_grad for p in again.parameters())
    again.train()
    assert not again.training, "a reference stays in eval mode"


def test_trial_weights_reload_to_the_same_accuracy(setup: tuple[gms.GMObjective, Path]) -> None:
    objective, _ = setup
    study = gms.create_study(study_name="w", storage=None, sampler=gms.NicheEvolutionSampler(
        population_size=2, seed=1, epoch_schedule=None))
    study.optimize(objective, n_trials=2)
    trial = study.best_trial
    net = gms.load_trial_model(trial, objective.artifact_store, objective.data)
    clean = gms.accuracy(net, objective.data.val.x, objective.data.val.y)
    assert clean == pytest.approx(trial.user_attrs["clean_acc"])


def test_trial_weights_are_optuna_artifacts(setup: tuple[gms.GMObjective, Path], tmp_path: Path) -> None:
    """A trial's weights are an Optuna artifact of the trial (Optuna's upload_artifact), listed by Optuna."""
    objective, _ = setup
    sampler = gms.NicheEvolutionSampler(population_size=2, seed=1, epoch_schedule=None)
    study = gms.create_study(study_name="a", storage=f"sqlite:///{tmp_path / 'a.db'}", sampler=sampler)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    (meta,) = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
    assert meta.artifact_id == trial.user_attrs[WEIGHTS_KEY]
    assert (meta.filename, meta.mimetype, meta.encoding) == ("trial-0-weights.pt", "application/octet-stream", None)
    path = tmp_path / "w.pt"
    optuna.artifacts.download_artifact(artifact_store=objective.artifact_store, artifact_id=meta.artifact_id,
                                       file_path=str(path))
    payload = torch.load(path, weights_only=True)
    assert payload["genome"] == trial.system_attrs[GENOME_KEY] and payload["num_classes"] == 10

    # a study's weights (refinement) are an artifact of the study
    other = optuna.create_study()
    genome = gms.genome_of(trial)
    artifact_id = schema.save_weights(objective.artifact_store, other, objective.build(genome), genome,
                                      input_shape=objective.data.input_shape, num_classes=10)
    (meta,) = optuna.artifacts.get_all_artifact_meta(other)
    assert (meta.artifact_id, meta.filename, meta.mimetype) == (artifact_id, "weights.pt", "application/octet-stream")


def test_a_diverging_child_fails_alone(setup: tuple[gms.GMObjective, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    objective, _ = setup
    sampler = gms.NicheEvolutionSampler(population_size=2, seed=2, epoch_schedule=None)
    study = gms.create_study(study_name="nan", storage=None, sampler=sampler)
    real = gms.losses.gm_objective

    def nan_loss(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        ce, gm = real(*args, **kwargs)  # type: ignore[arg-type]
        return ce, gm * math.nan

    with monkeypatch.context() as m:
        m.setattr(gms.losses, "gm_objective", nan_loss)
        study.optimize(objective, n_trials=1)
    study.optimize(objective, n_trials=1)
    failed, ok = study.get_trials()
    assert failed.state == TrialState.FAIL and "diverged" in failed.user_attrs[FAIL_REASON_KEY]
    assert ok.state == TrialState.COMPLETE


def test_a_trial_stores_its_learning_curve_with_its_results(
    setup: tuple[gms.GMObjective, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    from gmsearch.search import writes

    objective = copy.copy(setup[0])
    objective.epochs = 3
    writes_seen: list[dict[str, object]] = []
    real = writes.write_trial

    def counted(storage: optuna.storages.BaseStorage, trial_id: int, **kwargs: object) -> None:
        writes_seen.append(kwargs)
        real(storage, trial_id, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("gmsearch.search.objective.write_trial", counted)
    # no timed flush of the curve mid-trial (a loaded machine's slow epochs would trigger one): only the final write
    monkeypatch.setattr(writes.EpochReports.__init__, "__kwdefaults__", {"flush_seconds": float("inf")})
    study = gms.create_study(study_name="curve", storage=f"sqlite:///{tmp_path / 'curve.db'}",
                             sampler=gms.NicheEvolutionSampler(population_size=2, seed=3, epoch_schedule=None))
    study.optimize(objective, n_trials=1)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert trial.intermediate_values[3] == pytest.approx(trial.value), "the last epoch's fitness is the trial's"
    (final,) = [w for w in writes_seen if w.get("intermediate_values")]
    assert "clean_acc" in final["user_attrs"], "the curve is written with the results, in one transaction"  # type: ignore[operator]


def test_a_trained_child_leaves_no_tensors_for_the_garbage_collector(setup: tuple[gms.GMObjective, Path]) -> None:
    """The objective skips a full gc.collect() after a trained child (~0.4 s in a big process): reference
    counting alone must free the child's network, optimiser and activations."""
    import gc

    objective, _ = setup
    sampler = gms.NicheEvolutionSampler(population_size=2, seed=4, epoch_schedule=None)
    study = gms.create_study(study_name="gc", storage=None, sampler=sampler)

    def live_tensors() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    gc.collect()
    gc.disable()  # only reference counting frees anything from here on
    try:
        study.optimize(objective, n_trials=1)
        after_one = live_tensors()
        study.optimize(objective, n_trials=2)
        assert live_tensors() == after_one, "a trained child left tensors in reference cycles"
    finally:
        gc.enable()
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
