"""Refinement of the final population and `gmsearch export`, on a tiny digits study (8x8, one epoch per child)."""

from __future__ import annotations

import runpy
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState

import gmsearch as gms
from gmsearch import cli
from gmsearch.search import schema
from gmsearch.search.schema import GENOME_KEY, REFINED_PREFIX, WEIGHTS_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[optuna.Study, gms.GMObjective, str]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("export")
    cache = tmp_path_factory.getbasetemp() / "gmsearch-cache"  # shared with tests/test_workers.py
    data = gms.datasets.load("digits", seed=0, image_size=8)
    ref = gms.references.get("hand_a", data, epochs=2, seed=0, cache_dir=cache)
    objective = gms.GMObjective(
        data, reference=ref, attack="pgd_linf", attack_params={"eps": 0.2, "alpha": 0.05, "steps": 2},
        epochs=1, cache_dir=cache, artifact_store=work / "gmsearch_artifacts",  # where export looks by default
    )
    url = f"sqlite:///{work / 'study.db'}"
    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, generations=1, seed=0, epoch_schedule=None)
    study = gms.create_study(study_name="tiny", storage=url, sampler=sampler)
    schema.record_data(study, objective.data)  # as `gmsearch run` does
    study.optimize(objective, n_trials=10)
    assert len(study.trials) == 4
    yield study, objective, url
    torch.set_num_threads(threads)


def _export(*args: str) -> int:
    return cli.main(["export", *args])


def test_export_writes_genome_weights_and_a_snippet_that_loads_them(
    tiny: tuple[optuna.Study, gms.GMObjective, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study, objective, url = tiny
    assert _export("--storage", url, "--study", "tiny", "--best", "--out", str(tmp_path / "best")) == 0
    assert f"trial {study.best_trial.number} exported" in capsys.readouterr().out
    out = tmp_path / "best"
    assert gms.Genome.from_json((out / "genome.json").read_text()) == gms.genome_of(study.best_trial)
    state = torch.load(out / "weights.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    net = runpy.run_path(str(out / "load_model.py"))["load_model"]()
    reference = gms.load_trial_model(study.best_trial, objective.artifact_store, objective.data)
    x = objective.data.val.x[:64]
    assert torch.allclose(net(x), reference(x))
    assert gms.accuracy(net, objective.data.val.x, objective.data.val.y) == pytest.approx(
        study.best_trial.user_attrs["clean_acc"]
    )
    # a chosen trial, default folder name, the only study of the storage found without --study
    assert _export("--storage", url, "--trial", "0", "--out", str(tmp_path / "zero")) == 0
    assert (tmp_path / "zero" / "trial.json").read_text().count('"trial": 0') == 1


def test_export_errors_are_clear(
    tiny: tuple[optuna.Study, gms.GMObjective, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study, objective, url = tiny
    # a second study: one trial without weights, one without genome, one whose weights record no input size
    bare = gms.create_study(study_name="bare", storage=url, sampler=gms.NicheEvolutionSampler(seed=0))
    genome = study.best_trial.system_attrs[GENOME_KEY]
    bare.add_trial(optuna.trial.create_trial(value=0.1, system_attrs={GENOME_KEY: genome}))
    bare.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    payload = tmp_path / "payload.pt"
    torch.save({"state_dict": objective.load_trial_model(study.best_trial).state_dict()}, payload)
    store = objective.artifact_store
    assert isinstance(store, FileSystemArtifactStore)
    artifact = upload_artifact(artifact_store=store, file_path=str(payload), study_or_trial=bare)
    bare.add_trial(optuna.trial.create_trial(
        value=0.2, system_attrs={GENOME_KEY: genome}, user_attrs={WEIGHTS_KEY: artifact}
    ))
    cases = [
        (["--storage", url, "--study", "nope"], "no study named 'nope'"),
        (["--storage", url], "choose one with --study"),
        (["--storage", f"sqlite:///{tmp_path / 'missing.db'}", "--study", "tiny"], "no such file"),
        (["--storage", url, "--study", "tiny", "--trial", "99"], "no trial 99"),
        (["--storage", url, "--study", "bare", "--trial", "0"], "no saved weights"),
        (["--storage", url, "--study", "bare", "--trial", "1"], "no genome"),
        (["--storage", url, "--study", "bare", "--trial", "2"], "--image-size"),
        (["--storage", url, "--study", "bare", "--trial", "2", "--image-size", "8", "--in-channels", "3"],
         "do not fit"),
        (["--storage", url, "--study", "tiny", "--trial", "0", "--refined"], "not been refined"),
        (["--storage", url, "--study", "tiny", "--artifacts", str(tmp_path)], "not found in"),
    ]
    for args, message in cases:
        assert _export(*args, "--out", str(tmp_path / "x")) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "x").exists(), "nothing written on error"
    assert _export("--storage", url, "--study", "bare", "--trial", "2", "--image-size", "8x8",
                   "--out", str(tmp_path / "sized")) == 0
    assert (tmp_path / "sized" / "weights.pt").is_file()


def test_refine_trains_the_population_further_and_stores_results(
    tiny: tuple[optuna.Study, gms.GMObjective, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, objective, url = tiny
    with pytest.raises(ValueError, match="epochs"):
        gms.refine(study, objective, epochs=0)
    results = gms.refine(study, objective, epochs=2, top=1)
    best = max(gms.population(study), key=lambda t: t.value or 0.0)
    assert [r.trial for r in results] == [best.number]
    result = results[0]
    assert result.epochs == 2 and result.search_epochs == 1
    for acc in (result.val_clean_acc, result.val_adv_acc, result.test_clean_acc, result.test_adv_acc):
        assert 0.0 <= acc <= 1.0
    assert result.fitness == pytest.approx(min(result.val_clean_acc, result.val_adv_acc))
    stored = study.user_attrs[f"{REFINED_PREFIX}{result.trial}"]
    assert stored["weights"] == result.weights and stored["test_adv_acc"] == result.test_adv_acc
    # the refined weights: exported, they give the stored test accuracy
    assert cli.main(["export", "--storage", url, "--study", "tiny", "--trial", str(result.trial), "--refined",
                     "--out", str(tmp_path / "refined")]) == 0
    net = runpy.run_path(str(tmp_path / "refined" / "load_model.py"))["load_model"]()
    assert gms.accuracy(net, objective.data.test.x, objective.data.test.y) == pytest.approx(result.test_clean_acc)
    # already refined for 2 epochs: not trained again
    from gmsearch.search import refinement as module
    monkeypatch.setattr(module, "train", lambda *a, **k: pytest.fail("trained again"))
    assert gms.refine(study, objective, epochs=2, top=1) == results
