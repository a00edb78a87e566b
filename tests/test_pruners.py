"""NichePruner: stop a child behind its rival; pruned children never enter the population; shadow mode."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState, create_trial

import gmsearch as gms
from gmsearch.data import Dataset
from gmsearch.registry import REGISTRIES
from gmsearch.search import pruners
from gmsearch.search.pruners import RIVAL_KEY, WOULD_PRUNE_KEY, NichePruner, shadow_report
from gmsearch.search.schema import GENOME_KEY, PARENT_KEY, PRUNE_SHADOW_KEY, REPLACED_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)


def chain(n_conv: int, n_pool: int = 0) -> gms.Genome:
    """A genome of ``n_conv`` convs then ``n_pool`` pools in a chain (spectrum (n_conv, n_pool, 0, 0, 0))."""
    blocks = [gms.Block("conv", (i - 1,), out_channels=4, kernel_size=3) for i in range(n_conv)]
    blocks += [gms.Block("pool", (n_conv + i - 1,), pool_type="max") for i in range(n_pool)]
    return gms.Genome(tuple(blocks))


# --------------------------------------------------------------------------- hand-built curves

A, B = chain(1), chain(6)  # two candidates, far apart in spectrum distance


def _study(population_size: int = 2, *, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    sampler = gms.NicheEvolutionSampler(population_size=population_size, n_children=2, seed=0)
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)


def _add(study: optuna.Study, genome: gms.Genome, curve: dict[int, float], *, parent: int | None = None,
         state: TrialState = TrialState.COMPLETE, replaced: int | None = None) -> None:
    study.add_trial(create_trial(
        state=state, value=curve[max(curve)],  # Optuna gives a pruned trial its last value
        system_attrs={GENOME_KEY: genome.to_json()},
        user_attrs={PARENT_KEY: parent, REPLACED_KEY: replaced}, intermediate_values=curve,
    ))


def _running_child(study: optuna.Study, genome: gms.Genome, curve: dict[int, float],
                   parent: int | None = 0) -> FrozenTrial:
    template = create_trial(
        state=TrialState.RUNNING, system_attrs={GENOME_KEY: genome.to_json()},
        user_attrs={PARENT_KEY: parent}, intermediate_values=curve,
    )
    tid = study._storage.create_new_trial(study._study_id, template_trial=template)
    return study._storage.get_trial(tid)


def _population_with_curves() -> optuna.Study:
    study = _study()
    _add(study, A, {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8})  # trial 0, the rival of children close to A
    _add(study, B, {1: 0.1, 2: 0.1, 3: 0.1, 4: 0.1})  # trial 1
    return study


def test_stops_a_child_clearly_behind_its_rival_and_not_one_ahead() -> None:
    study = _population_with_curves()
    pruner = NichePruner(warmup=1, margin=0.1)
    behind = _running_child(study, chain(2), {1: 0.1, 2: 0.3})  # closest to A (trial 0): 0.6 - 0.3 > 0.1
    assert pruner.prune(study, behind)
    stored = study._storage.get_trial(behind._trial_id)
    assert stored.user_attrs[RIVAL_KEY] == 0
    assert stored.user_attrs[WOULD_PRUNE_KEY] == 2
    assert stored.user_attrs[PRUNE_SHADOW_KEY] is False

    ahead = _running_child(study, chain(2), {1: 0.1, 2: 0.65})
    assert not pruner.prune(study, ahead)
    within = _running_child(study, chain(2), {1: 0.1, 2: 0.55})  # behind by 0.05 <= margin
    assert not pruner.prune(study, within)
    assert WOULD_PRUNE_KEY not in study._storage.get_trial(within._trial_id).user_attrs
    # the same curve that is far behind A is far ahead of B: the rival is the niche's candidate
    near_b = _running_child(study, chain(5), {1: 0.1, 2: 0.3})
    assert not pruner.prune(study, near_b)
    assert study._storage.get_trial(near_b._trial_id).user_attrs[RIVAL_KEY] == 1


def test_warmup_initial_candidates_and_missing_rival_curves_are_never_pruned() -> None:
    study = _population_with_curves()
    assert not NichePruner(warmup=2, margin=0.0).prune(study, _running_child(study, chain(2), {1: 0.0, 2: 0.0}))
    assert NichePruner(warmup=1, margin=0.0).prune(study, _running_child(study, chain(2), {1: 0.0, 2: 0.0}))
    initial = _running_child(study, chain(2), {1: 0.0, 2: 0.0}, parent=None)
    assert not NichePruner(warmup=0, margin=0.0).prune(study, initial)

    bare = _study()
    _add(bare, A, {1: 0.9})
    bare.add_trial(create_trial(value=0.9, system_attrs={GENOME_KEY: B.to_json()}, user_attrs={PARENT_KEY: None}))
    assert not NichePruner(warmup=0).prune(bare, _running_child(bare, chain(5), {1: 0.0}))  # rival B: no curve
    assert NichePruner(warmup=0).prune(bare, _running_child(bare, chain(2), {1: 0.0}))  # rival A has one


def test_a_rival_with_fewer_epochs_stands_at_its_last_value() -> None:
    study = _population_with_curves()  # rival A trained 4 epochs, ending at 0.8
    pruner = NichePruner(warmup=0, margin=0.1)
    assert pruner.prune(study, _running_child(study, chain(2), {6: 0.65}))
    assert not pruner.prune(study, _running_child(study, chain(2), {6: 0.75}))


def test_the_bar_is_what_decides_replacement_when_the_rival_peaks_and_falls() -> None:
    """Replacement is decided against the rival's final value: a child level with it is never stopped."""
    study = _study()
    _add(study, A, {1: 0.5, 2: 0.9, 3: 0.6})  # trial 0 peaks at epoch 2 (0.9) and ends at 0.6
    _add(study, B, {1: 0.1, 2: 0.1, 3: 0.1})
    pruner = NichePruner(warmup=0, margin=0.1)
    # 0.25 behind the rival's epoch-2 value, yet ahead of its final 0.6: it would replace it
    assert not pruner.prune(study, _running_child(study, chain(2), {2: 0.65}))
    assert pruner.prune(study, _running_child(study, chain(2), {2: 0.45}))  # 0.15 behind even the final value
    assert pruner.prune(study, _running_child(study, chain(2), {1: 0.35}))  # rising rival: its epoch-1 value bars
    row = {"curve": {1: 0.5, 2: 0.65, 3: 0.7}, "rival_curve": {1: 0.5, 2: 0.9, 3: 0.6}, "rival_value": 0.6}
    assert pruners.would_prune_at(row, warmup=0, margin=0.1) is None
    assert pruners.would_prune_at({**row, "curve": {1: 0.5, 2: 0.45}}, warmup=0, margin=0.1) == 2
    low = {"curve": {1: 0.35, 2: 0.45}, "rival_curve": {1: 0.2, 2: 0.5}, "rival_value": 0.5}  # minimisation
    assert pruners.would_prune_at(low, warmup=0, margin=0.1, maximize=False) is None
    assert pruners.would_prune_at({**low, "curve": {1: 0.65}}, warmup=0, margin=0.1, maximize=False) == 1


def test_minimize_studies_are_pruned_the_other_way() -> None:
    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=2, seed=0)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    _add(study, A, {1: 0.5})
    _add(study, B, {1: 0.5})
    pruner = NichePruner(warmup=0, margin=0.1)
    assert pruner.prune(study, _running_child(study, chain(2), {1: 0.7}))
    assert not pruner.prune(study, _running_child(study, chain(2), {1: 0.3}))


def test_a_pruned_child_never_enters_the_population() -> None:
    study = _population_with_curves()
    before = [t.number for t in gms.population(study)]
    # pruned with a curve that ends far above both candidates' fitness: it still never replaces
    _add(study, chain(2), {1: 0.95, 2: 0.99}, parent=0, state=TrialState.PRUNED)
    assert [t.number for t in gms.population(study)] == before == [0, 1]
    _add(study, chain(2), {1: 0.85, 2: 0.9}, parent=0)  # the same child COMPLETE does replace trial 0
    assert [t.number for t in gms.population(study)] == [3, 1]


def test_shadow_mode_records_but_never_prunes() -> None:
    study = _population_with_curves()
    pruner = NichePruner(warmup=1, margin=0.1, shadow=True)
    child = _running_child(study, chain(2), {1: 0.1, 2: 0.3})
    assert not pruner.prune(study, child)
    stored = study._storage.get_trial(child._trial_id)
    assert stored.user_attrs[WOULD_PRUNE_KEY] == 2 and stored.user_attrs[PRUNE_SHADOW_KEY] is True
    # a later epoch keeps the first decision
    study._storage.set_trial_intermediate_value(child._trial_id, 3, 0.2)
    assert not pruner.prune(study, study._storage.get_trial(child._trial_id))
    assert study._storage.get_trial(child._trial_id).user_attrs[WOULD_PRUNE_KEY] == 2


def test_shadow_report_counts_stops_savings_and_missed_replacements() -> None:
    study = _population_with_curves()
    curve = {e: 0.5 for e in range(1, 7)}
    _add(study, chain(2), curve, parent=0)  # 2: not stopped, not replacing
    study.add_trial(create_trial(  # 3: would be stopped at 2 of 6 epochs and did replace: a missed replacement
        value=0.9, system_attrs={GENOME_KEY: chain(2).to_json()}, intermediate_values=curve,
        user_attrs={PARENT_KEY: 0, WOULD_PRUNE_KEY: 2, REPLACED_KEY: 0},
    ))
    study.add_trial(create_trial(  # 4: stopped at 3 of 6, lost
        value=0.1, system_attrs={GENOME_KEY: chain(2).to_json()}, intermediate_values=curve,
        user_attrs={PARENT_KEY: 0, WOULD_PRUNE_KEY: 3, REPLACED_KEY: None},
    ))
    report = shadow_report(study)
    assert report["children"] == 3 and report["child_epochs"] == 18
    assert report["stopped"] == 2 and report["stopped_share"] == pytest.approx(2 / 3)
    assert report["epochs_saved"] == 4 + 3
    assert report["replacements"] == 1 and report["missed"] == 1 and report["missed_trials"] == [3]
    assert report["missed_share"] == pytest.approx(0.5)


def test_shadow_report_counts_replacements_from_the_replay_not_the_workers_record() -> None:
    """With several workers, a child's own gmsearch:replaced can disagree with the replay (gms.lineage)."""
    study = _population_with_curves()  # trial 0 ends at 0.8
    curve = {e: 0.5 for e in range(1, 5)}
    study.add_trial(create_trial(  # 2: finishes first and replaces trial 0
        value=0.95, system_attrs={GENOME_KEY: chain(2).to_json()}, intermediate_values=curve,
        user_attrs={PARENT_KEY: 0, REPLACED_KEY: 0},
    ))
    study.add_trial(create_trial(  # 3: its worker saw trial 0 still in place, but in the replay 2 came first
        value=0.9, system_attrs={GENOME_KEY: chain(2).to_json()}, intermediate_values=curve,
        user_attrs={PARENT_KEY: 0, WOULD_PRUNE_KEY: 2, REPLACED_KEY: 0},
    ))
    assert {r["number"]: r["replaced"] for r in gms.lineage(study)}[3] is None
    report = shadow_report(study)
    assert report["replacements"] == 1 and report["missed"] == 0 and report["missed_trials"] == []
    assert [r["replaced"] for r in pruners.learning_curves(study)] == [True, False]


# --------------------------------------------------------------------------- real studies, fake training

S, N, E = 3, 2, 5


def fitness(genome: gms.Genome) -> float:
    n_conv, n_pool, n_sconv, n_sum, n_concat = genome.spectrum()
    return -abs(n_conv - 6) - 0.5 * abs(n_sum - 2) + 0.25 * n_pool - 0.1 * n_sconv + 0.05 * n_concat


def curve(genome: gms.Genome) -> dict[int, float]:
    """Every learning curve has the same shape: a child is behind its rival at every epoch iff it ends behind."""
    final = fitness(genome)
    return {e: final - 0.2 * (E - e) for e in range(1, E + 1)}


def objective(trial: optuna.Trial) -> float:
    values = curve(gms.genome_of(trial))
    for epoch, value in values.items():
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}")
    return values[E]


def _run(storage: Any = None, n_trials: int = S + 4 * S * N, *, shadow: bool = False,
         name: str = "s", check: list[str] | None = None) -> optuna.Study:
    sampler = gms.NicheEvolutionSampler(population_size=S, n_children=N, min_distance=3.0, seed=7)
    study = gms.create_study(study_name=name, storage=storage, sampler=sampler,
                             pruner=NichePruner(warmup=1, margin=0.33, shadow=shadow))

    def pruned_stay_out(study: optuna.Study, trial: FrozenTrial) -> None:
        live = {t.number for t in gms.population(study)}
        pruned = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))}
        if live & pruned:
            (check if check is not None else []).append(f"pruned {live & pruned} in population")

    study.optimize(objective, n_trials=n_trials, callbacks=[pruned_stay_out])
    return study


def _signature(study: optuna.Study) -> list[tuple[int, str, str, float | None, dict[int, float]]]:
    return [(t.number, t.state.name, t.system_attrs[GENOME_KEY], t.value, dict(t.intermediate_values))
            for t in study.trials]


def test_in_a_real_study_only_losers_are_pruned_and_never_enter() -> None:
    problems: list[str] = []
    study = _run(check=problems)
    assert not problems
    trials = {t.number: t for t in study.trials}
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "the scenario must prune some children"
    for t in pruned:
        rival = trials[t.user_attrs[RIVAL_KEY]]
        assert fitness(gms.genome_of(t)) < rival.value - 0.33  # clearly behind at every epoch, so at the end
        at = t.user_attrs[WOULD_PRUNE_KEY]
        assert at == 2  # the first epoch after the warmup
        assert t.intermediate_values == {e: v for e, v in curve(gms.genome_of(t)).items() if e <= at}
        assert REPLACED_KEY not in t.user_attrs
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.intermediate_values == curve(gms.genome_of(t))  # every epoch stored
    assert not {t.number for t in gms.population(study)} & {t.number for t in pruned}


def test_shadow_mode_prunes_nothing_and_marks_what_the_pruner_stops() -> None:
    real = _run()
    shadow = _run(shadow=True)
    assert all(t.state == TrialState.COMPLETE for t in shadow.trials)
    marked = {t.number for t in shadow.trials if t.user_attrs.get(WOULD_PRUNE_KEY) is not None}
    # curves of one shape: stopped children never replace, so both runs take the same path
    assert marked == {t.number for t in real.trials if t.state == TrialState.PRUNED}
    assert [t.number for t in gms.population(shadow)] == [t.number for t in gms.population(real)]
    report = shadow_report(shadow)
    assert report["stopped"] == len(marked) > 0 and report["missed"] == 0
    assert report["epochs_saved"] == len(marked) * (E - 2)
    assert report["child_epochs"] == 4 * S * N * E


def test_resume_after_a_pruned_trial_rebuilds_the_same_population(tmp_path: Path) -> None:
    one_go = _run()
    first_pruned = min(t.number for t in one_go.trials if t.state == TrialState.PRUNED)
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    part = _run(url, n_trials=first_pruned + 1, name="r")  # stops right after the first pruned child
    assert part.trials[-1].state == TrialState.PRUNED
    before = [t.number for t in gms.population(part)]
    del part
    reopened = gms.load_study(study_name="r", storage=url)
    assert [t.number for t in gms.population(reopened, population_size=S)] == before
    resumed = _run(url, n_trials=len(one_go.trials) - first_pruned - 1, name="r")
    assert _signature(resumed) == _signature(one_go)
    assert [t.number for t in gms.population(resumed)] == [t.number for t in gms.population(one_go)]


def test_gms_train_stores_every_epoch_and_a_pruned_child_keeps_its_curve(
    tiny_data: Callable[[int], Dataset],
) -> None:
    data = tiny_data(32)
    epochs = 3

    def train_objective(trial: optuna.Trial) -> float:
        net = gms.build(gms.genome_of(trial), 1, 4, 8)
        result = gms.train(net, data, lam=0.0, epochs=epochs, batch_size=16, trial=trial, device="cpu")
        return float(result.final["val_acc"])

    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=2, min_distance=2.0, seed=1)
    study = gms.create_study(storage=None, sampler=sampler, pruner=NichePruner(warmup=0, margin=0.0))
    study.optimize(train_objective, n_trials=10)
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == list(range(1, epochs + 1))
        else:
            assert t.state == TrialState.PRUNED
            assert sorted(t.intermediate_values) == list(range(1, t.user_attrs[WOULD_PRUNE_KEY] + 1))


# --------------------------------------------------------------------------- registry and settings


def test_pruners_are_created_by_name() -> None:
    assert {"niche", "median", "hyperband", "nop"} <= set(pruners.names())
    assert REGISTRIES["pruner"] is pruners.registry
    niche = pruners.create("niche", warmup=3, margin=0.2, shadow=True)
    assert isinstance(niche, NichePruner) and (niche.warmup, niche.margin, niche.shadow) == (3, 0.2, True)
    median = pruners.create("median", n_warmup_steps=2)  # in ChildrenOnly: see tests/test_pruner_safety.py
    assert isinstance(median, pruners.ChildrenOnly) and isinstance(median.inner, optuna.pruners.MedianPruner)
    assert isinstance(pruners.create("hyperband").inner, optuna.pruners.HyperbandPruner)
    assert isinstance(pruners.create("nop"), optuna.pruners.NopPruner)
    assert gms.NichePruner is NichePruner
    with pytest.raises(KeyError, match="unknown pruner 'nope'; available: .*niche"):
        pruners.create("nope")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"warmup": -1}, "warmup must be an int >= 0.*-1"),
        ({"warmup": 1.5}, "warmup .*1.5"),
        ({"margin": -0.1}, "margin must be .*-0.1"),
        ({"margin": math.nan}, "margin .*nan"),
        ({"shadow": "yes"}, "shadow .*'yes'"),
        ({"population_size": 0}, "population_size .*0"),
    ],
)
def test_bad_settings_are_rejected(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NichePruner(**kw)


def test_a_study_without_search_settings_needs_population_size() -> None:
    study = optuna.create_study(direction="maximize")  # no gmsearch sampler, no stored settings
    _add(study, A, {1: 0.9})
    _add(study, B, {1: 0.9})
    assert not NichePruner(warmup=0).prune(study, _running_child(study, chain(2), {1: 0.0}))
    assert NichePruner(warmup=0, population_size=2).prune(study, _running_child(study, chain(2), {1: 0.0}))


def test_config_names_the_pruner_and_plugins_lists_pruners() -> None:
    from gmsearch import config
    from gmsearch.plugins import table

    assert config.parse({}).search.pruner == "nop"
    cfg = config.parse({"search": {"pruner": "niche", "pruner_params": {"warmup": 1, "margin": 0.2}}})
    pruner = pruners.create(cfg.search.pruner, **cfg.search.pruner_params)
    assert isinstance(pruner, NichePruner) and (pruner.warmup, pruner.margin) == (1, 0.2)
    with pytest.raises(config.ConfigError, match="pruner_params must be a table"):
        config.parse({"search": {"pruner_params": 3}})
    assert {"niche", "median", "hyperband", "nop"} <= {row[1] for row in table() if row[0] == "pruner"}


def test_search_cost_benchmark_runs_both_ways_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/search_cost.py (the README's "Cheaper search" table) runs end to end at a tiny size."""
    from benchmarks import search_cost

    argv = ["--quick", "--seeds", "2", "--population", "2", "--children", "1", "--generations", "1", "--epochs", "2",
            "--workdir", str(tmp_path), "--curves", str(tmp_path / "curves.json")]
    assert search_cost.main(argv) == 0
    out = capsys.readouterr().out
    for way in ("paper", "niche", "inherit"):
        assert f"{way} seed 0:" in out and f"{way} seed 1:" in out
    assert "child-epochs saved by inherit" in out
    assert "child-epochs" in out and "+-" in out
    assert search_cost.main(["--sweep", str(tmp_path / "curves.json")]) == 0


def test_inheritance_copies_exactly_the_unchanged_blocks() -> None:
    import random

    from gmsearch.nets.builder import block_signatures, inherit_weights

    parent_genome = gms.zoo.genome("hand_a")
    parent = gms.build(parent_genome, in_channels=1, num_classes=10, image_size=16)
    for p in parent.parameters():  # "trained": far from any fresh initialisation
        p.data.fill_(0.125)
    checked = 0
    for k in range(12):
        child_genome = gms.mutations.aggressive_mutation(parent_genome, random.Random(k), k=(1, 2))
        child = gms.build(child_genome, in_channels=1, num_classes=10, image_size=16)
        fresh = {key: v.clone() for key, v in child.state_dict().items()}
        copied = inherit_weights(child, parent, parent_genome)
        theirs = {sig: i for i, sig in reversed(list(enumerate(block_signatures(parent_genome))))}
        unchanged = [i for i, sig in enumerate(block_signatures(child_genome)) if sig in theirs]
        state = child.state_dict()
        for key, value in state.items():
            if key.startswith("body."):
                i = int(key.split(".")[1])
                source = parent.state_dict()[f"body.{theirs[block_signatures(child_genome)[i]]}." +
                                             key.split(".", 2)[2]] if i in unchanged else None
                if source is not None and source.shape == value.shape:
                    assert torch.equal(value, source), key  # copied exactly
                    assert i in copied
                else:
                    assert torch.equal(value, fresh[key]), key  # left as initialised
        checked += len(unchanged)
    assert checked > 0, "some mutations leave blocks unchanged"


def test_an_inheriting_child_starts_from_its_parent_and_trains_fewer_epochs(tmp_path: Path) -> None:
    data = gms.datasets.load("digits", seed=0, image_size=8)
    ref = gms.references.get("hand_a", data, epochs=1, cache_dir=tmp_path / "cache")
    objective = gms.GMObjective(data, reference=ref, attack_params={"eps": 0.2, "alpha": 0.05, "steps": 2},
                                epochs=2, cache_dir=tmp_path / "cache", artifact_store=tmp_path / "art",
                                inherit=True, inherit_epochs=0.5)
    study = gms.create_study(study_name="inherit", storage=None, sampler=gms.NicheEvolutionSampler(
        population_size=2, n_children=2, seed=0, mutations_per_child=1, epoch_schedule=None))
    study.optimize(objective, n_trials=6)
    children = [t for t in study.trials if t.user_attrs.get(PARENT_KEY) is not None and t.values]
    inherited = [t for t in children if t.user_attrs.get("gmsearch:inherited")]
    assert inherited, "with one mutation per child some blocks are unchanged"
    assert all(t.user_attrs["epochs"] == 1 for t in inherited)
    with pytest.raises(ValueError, match="inherit_epochs"):
        gms.GMObjective(data, reference=ref, inherit=True, inherit_epochs=0.0, cache_dir=tmp_path / "cache")
