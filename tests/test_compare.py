"""``gmsearch compare``: the statistics against a hand computation, the budget bookkeeping, and a --quick run."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial
from torch import nn

import gmsearch as gms
from gmsearch import cli
from gmsearch.config import parse
from gmsearch.data import Dataset, Split
from gmsearch.errors import UsageError
from gmsearch.evaluation import compare as cmp
from gmsearch.search import schema
from gmsearch.search.mutations import SizeBudget

optuna.logging.set_verbosity(optuna.logging.WARNING)

T_95_3 = 2.3533634  # Student's t, 95th percentile, 3 degrees of freedom (a printed table's value)


def test_paired_statistics_match_a_hand_computation() -> None:
    niche, other = [0.5, 0.7, 0.6, 0.9], [0.4, 0.6, 0.7, 0.5]
    # differences 0.1, 0.1, -0.1, 0.4: mean 0.125; squared deviations sum to 0.1275, sd = sqrt(0.1275 / 3)
    sd = math.sqrt(0.1275 / 3)
    st = cmp.paired_stats(niche, other)
    assert st["mean_diff"] == pytest.approx(0.125)
    assert st["sd"] == pytest.approx(sd)
    assert st["lower95"] == pytest.approx(0.125 - T_95_3 * sd / 2, abs=1e-6)  # -0.11758
    assert (st["wins"], st["n"]) == (3, 4)
    one = cmp.paired_stats([0.3], [0.2])
    assert one["lower95"] is None and one["sd"] is None and one["wins"] == 1
    with pytest.raises(ValueError, match="equally long"):
        cmp.paired_stats([0.1, 0.2], [0.1])


def _run(way: str, seed: int, fitness: float, epochs: int = 4) -> dict[str, object]:
    return {"way": way, "seed": seed, "child_epochs": epochs, "search_seconds": 1.0, "retrain_seconds": 0.5,
            "test": {"clean": fitness + 0.1, "adv": fitness, "fitness": fitness}, "curve": [[2.0, fitness]],
            "val_fitness": fitness + 0.05, "val_retrained": fitness - 0.05, "lucky_gap": 0.1, "val_noise_sd": 0.02}


def test_the_summary_and_printout_pair_the_ways_by_seed_and_say_n_a_for_one_seed() -> None:
    fitness = {"niche": [0.5, 0.7, 0.6, 0.9], "random": [0.4, 0.6, 0.7, 0.5]}
    runs = {w: {str(s): _run(w, s, v) for s, v in enumerate(vs)} for w, vs in fitness.items()}
    fixed = {str(s): {name: {"clean": 0.9, "adv": 0.1, "fitness": 0.1} for name in cmp.FIXED_ROWS} for s in range(4)}
    result = cmp.summarize(["niche", "random"], [0, 1, 2, 3], runs, fixed)
    result.update(budget=4, repeats=3)
    assert result["summary"]["niche"]["fitness"][0] == pytest.approx(0.675)
    st = result["stats"]["random"]["fitness"]
    assert st["mean_diff"] == pytest.approx(0.125) and st["wins"] == 3
    assert st["lower95"] == pytest.approx(0.125 - T_95_3 * math.sqrt(0.1275 / 3) / 2, abs=1e-6)
    text = "\n".join(cmp.compare_lines(result))
    assert "fitness +0.1250 (>= -0.1176, 3/4)" in text
    assert "niche        0.7750 +- 0.1708" in text  # clean = fitness + 0.1: mean 0.775, sd 0.17078
    assert result["curves"]["niche"]["mean"][-1] == pytest.approx(0.675)
    assert result["summary"]["niche"]["lucky_gap"][0] == pytest.approx(0.1)
    # niche's curve is one point [2, f]: it reaches random's final best where its own f is at least as high
    assert result["anytime"]["random"] == [2.0, 2.0, None, 2.0]
    assert "  random       2, 2, never, 2; median 50% of the budget where reached" in text
    assert "niche        stored 0.7250 +- 0.1708  lucky gap 0.1000 +- 0.0000  noise sd 0.0200" in text

    assert "replacements" not in text  # no margins stored: no line

    long = "niche[immigrants=0.5]"  # a variant's name widens the way column: the numbers stay in their columns
    variant = cmp.summarize(["niche", long], [0, 1, 2, 3], {"niche": runs["niche"], long: runs["random"]}, fixed)
    variant.update(budget=4, repeats=3)
    table = cmp.compare_lines(variant)[1:4]
    assert len({len(line) for line in table}) == 1 and table[2].startswith(f"  {long} 0.6500 +- ")

    by_random = cmp.summarize(["niche", "random"], [0, 1, 2, 3], runs, fixed, base="random")
    by_random.update(budget=4, repeats=3)
    assert by_random["stats"]["niche"]["fitness"]["mean_diff"] == pytest.approx(-0.125)
    assert "random minus way" in "\n".join(cmp.compare_lines(by_random)) and "random" not in by_random["stats"]

    single = cmp.summarize(["niche", "random"], [0], {w: {"0": r["0"]} for w, r in runs.items()},
                           {"0": fixed["0"]})
    single.update(budget=4, repeats=1)
    text = "\n".join(cmp.compare_lines(single))
    assert "fitness +0.1000 (>= n/a, 1/1)" in text and "0.6000 +- n/a" in text


def test_replacement_margins_are_read_from_the_trials_and_set_against_the_noise() -> None:
    study = optuna.create_study(direction="maximize")
    for value, replaced in [(0.5, None), (0.6, None), (0.55, 0), (0.9, 1), (0.4, None), (0.58, 2)]:
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=value,
                                     user_attrs={schema.REPLACED_KEY: replaced}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={schema.REPLACED_KEY: 1}))
    assert cmp.replacement_margins(study) == pytest.approx([0.05, 0.3, 0.03])
    summary = cmp.margins_summary([[0.05, 0.3, 0.03], [0.01]], noise_sd=0.04)
    assert summary == pytest.approx({"per_seed": 2.0, "median": 0.04, "under_noise": 0.5})
    assert cmp.margins_summary([[], []], noise_sd=0.04)["median"] is None
    runs = {"niche": {"0": {**_run("niche", 0, 0.6), "margins": [0.05, 0.3, 0.03]},
                      "1": {**_run("niche", 1, 0.7), "margins": [0.01]}}}
    fixed = {k: {name: {"clean": 0.9, "adv": 0.1, "fitness": 0.1} for name in cmp.FIXED_ROWS} for k in "01"}
    result = cmp.summarize(["niche"], [0, 1], runs, fixed)
    result.update(budget=4, repeats=3)
    text = "\n".join(cmp.compare_lines(result))  # noise sd 0.02 (the runs'): 1 of 4 margins under it
    assert "  niche        2.0 replacements per seed, median 0.0400; 25% smaller than the noise sd" in text


def test_child_epochs_count_what_trials_trained_and_the_curve_is_best_so_far() -> None:
    study = optuna.create_study(direction="maximize")
    genome = {schema.GENOME_KEY: "{}"}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.3, user_attrs={"epochs": 2}, system_attrs=genome))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={0: 0.1}, system_attrs=genome))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.2, user_attrs={"epochs": 3}, system_attrs=genome))
    study.add_trial(create_trial(state=TrialState.FAIL, system_attrs=genome))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.6, user_attrs={"epochs": 3}, system_attrs=genome))
    assert cmp.child_epochs(study) == 2 + 1 + 3 + 3
    assert cmp.best_so_far(study) == [[2.0, 0.3], [3.0, 0.3], [6.0, 0.3], [9.0, 0.6]]
    assert cmp.winner(study)[0].number == 4
    # the niche plan: 2 initial trials of 1 epoch, then 2 children of 1 epoch per generation
    assert cmp.planned_child_epochs(1, 2, 1, gms.EpochSchedule(base=1, step=0, every=1)) == 4
    assert cmp.planned_child_epochs(2, 2, 1, gms.EpochSchedule(base=1, step=1, every=1)) == 2 + 2 + 2 * 2
    band = cmp.band([[[1.0, 0.2], [3.0, 0.5]], [[2.0, 0.4]]], points=3)  # before x = 2 only the first seed
    assert band["x"] == [1.0, 2.0, 3.0] and band["mean"] == pytest.approx([0.2, 0.3, 0.45])
    assert band["low"] == [0.2, 0.2, 0.4] and band["high"] == [0.2, 0.4, 0.5]


def test_seeds_and_ways_are_checked_in_one_line() -> None:
    assert cmp.parse_seeds("0-4") == [0, 1, 2, 3, 4] and cmp.parse_seeds("3,1") == [3, 1]
    with pytest.raises(UsageError, match="--seeds"):
        cmp.parse_seeds("0-x")
    with pytest.raises(UsageError, match="unknown \\['nope'\\]; choose from niche, random"):
        cmp.compare(parse({}), ways=["niche", "nope"], seeds=[0])
    with pytest.raises(UsageError, match="--base regularized: not one of the ways; choose from niche, random"):
        cmp.compare(parse({}), ways=["niche", "random"], seeds=[0], base="regularized")


def test_way_variants_carry_sampler_params_into_their_own_studies(tmp_path: Path) -> None:
    ways = cmp.parse_ways("niche, random,niche[immigrants=0.5, mutations_per_child=[2, 3]],regularized[sample_size=2]")
    assert ways == ["niche", "random", "niche[immigrants=0.5, mutations_per_child=[2, 3]]",
                    "regularized[sample_size=2]"]
    assert cmp.split_way(ways[2]) == ("niche", {"immigrants": 0.5, "mutations_per_child": [2, 3]})
    assert cmp.way_label(ways[2]) == "niche-immigrants0.5-mutations_per_child[2,3]"
    cfg = parse({"study": {"name": "c"}, "search": {"sampler_params": {"immigrants": 0.25}}})
    variant = cmp.way_config(cfg, "niche[mutations_per_child=[2, 3]]", 4)
    assert variant.search.sampler == "niche" and variant.seed == 4
    assert variant.search.sampler_params == {"immigrants": 0.25, "mutations_per_child": [2, 3]}  # over the config's
    assert variant.study.name == "c-niche-mutations_per_child[2,3]-s4"
    plain = cmp.way_config(cfg, "random", 1)
    assert plain.search.sampler_params == {} and plain.study.name == "c-random-s1"  # the studies of plain ways
    for bad in ("niche[immigrants=]", "niche[immigrants=0.5"):
        with pytest.raises(UsageError, match=f"way {re.escape(repr(bad))}"):
            cmp.split_way(bad)
    storage = f"sqlite:///{tmp_path}/w.db"
    with pytest.raises(ValueError, match="immigrants must be a share in"):  # checked before anything trains
        cmp.compare(parse({"study": {"storage": storage}}), ways=["niche", "niche[immigrants=2.0]"], seeds=[0])
    assert not list(tmp_path.glob("*.pt"))


def test_quick_compare_spends_equal_budgets_stores_the_result_and_reuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'device = "cpu"\n[study]\nname = "cmp"\nstorage = "sqlite:///{tmp_path}/cmp.db"\n'
                      f'cache_dir = "{tmp_path}/cache"\n')
    ways, seeds = ["niche", "random", "restarts"], [0, 1]
    # 5 child-epochs: past the 4 the 1-generation plan trains, so each way runs into a second generation and
    # stops after the trial that reaches the budget
    result = gms.compare(config, ways=ways, seeds=seeds, repeats=1, budget=5, quick=True)
    for seed in ("0", "1"):
        spent = [result["runs"][w][seed]["child_epochs"] for w in ways]
        # each reaches the budget and passes it by less than one child (a --quick child trains 1 epoch)
        assert all(5 <= s < 5 + 1 for s in spent), spent
        for w in ways:  # the winner's stored validation fitness against its retrained one, on the same images
            run = result["runs"][w][seed]
            assert 0.0 <= run["val_retrained"] <= 1.0 and run["val_noise_sd"] is None  # one repeat: no sd
            assert run["lucky_gap"] == pytest.approx(run["val_fitness"] - run["val_retrained"])
    st = result["stats"]["random"]["fitness"]
    diffs = [result["runs"]["niche"][s]["test"]["fitness"] - result["runs"]["random"][s]["test"]["fitness"]
             for s in ("0", "1")]
    assert st["mean_diff"] == pytest.approx(sum(diffs) / 2)
    if diffs[0] != diffs[1]:  # two seeds: t.ppf(0.95, 1) = 6.3138, sd = |d0 - d1| / sqrt(2)
        assert st["lower95"] == pytest.approx(sum(diffs) / 2 - 6.3137515 * abs(diffs[0] - diffs[1]) / 2, abs=1e-5)
    assert st["wins"] == sum(d > 0 for d in diffs)
    storage = f"sqlite:///{tmp_path}/cmp.db"
    stored = optuna.load_study(study_name="cmp-quick-compare", storage=storage).user_attrs[schema.COMPARE_KEY]
    assert stored["stats"] == result["stats"] and set(stored["curves"]) == set(ways)
    html = gms.report.render_report(optuna.load_study(study_name="cmp-quick-compare", storage=storage))
    assert "Ways at equal budget" in html and "Best validation fitness so far against child-epochs" in html
    assert "niche − random" in html
    niche = optuna.load_study(study_name="cmp-quick-niche-s1", storage=storage)
    n_trials = len(niche.trials)
    children = [t for t in niche.trials if t.state.is_finished() and t.user_attrs.get(schema.PARENT_KEY) is not None]
    replayed = result["runs"]["niche"]["1"]["prune_replay"]  # NichePruner's rule on the curves: 1-epoch children
    assert children and replayed == {"children": len(children), "child_epochs": len(children), "stopped": 0,
                                     "saved": 0, "replacements": sum(t.user_attrs[schema.REPLACED_KEY] is not None
                                                                     for t in children), "missed": 0}
    assert result["runs"]["random"]["1"]["prune_replay"] is None  # no niche population, no rival

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun retrained a network")

    monkeypatch.setattr(cmp, "retrain", no_training)  # winners and HE+GM: reused from storage
    assert cli.main(["compare", str(config), "--ways", ",".join(ways), "--seeds", "0-1", "--repeats", "1",
                     "--budget", "5", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "vs random" in out and "vs restarts" in out and "HE+GM" in out and "study cmp-quick-compare" in out
    assert "NichePruner's rule (its defaults) replayed" in out
    assert re.search(f"niche +would stop 0/{2 * len(children)} children", out)  # 2 seeds of 1-epoch children
    again = optuna.load_study(study_name="cmp-quick-compare", storage=storage).user_attrs[schema.COMPARE_KEY]
    assert again["runs"] == result["runs"]  # every way/seed reused: same winners, same timings
    assert len(optuna.load_study(study_name="cmp-quick-niche-s1", storage=storage).trials) == n_trials
    assert cli.main(["compare", str(config), "--ways", ",".join(ways), "--seeds", "0-1", "--repeats", "1",
                     "--budget", "5", "--quick", "--base", "random"]) == 0
    out = capsys.readouterr().out
    assert "random minus way" in out and "vs niche" in out and "vs restarts" in out
    html = gms.report.render_report(optuna.load_study(study_name="cmp-quick-compare", storage=storage))
    assert "random − niche" in html and "niche − random" not in html  # the report pairs the stored base


def test_way_specs_set_config_keys_with_dotted_names_and_refuse_shared_ones() -> None:
    cfg = parse({"study": {"name": "c"}, "training": {"lam": 1.0}})
    way = 'niche[fitness.last_epochs=3, search.pruner="niche", training.lam=0.5, immigrants=0.25]'
    assert cmp.parse_ways(f"random,{way}") == ["random", way]
    variant = cmp.way_config(cfg, way, 2)
    assert (variant.fitness.last_epochs, variant.search.pruner, variant.training.lam) == (3, "niche", 0.5)
    assert variant.search.sampler_params == {"immigrants": 0.25} and variant.seed == 2
    assert variant.study.name == "c-niche-fitness.last_epochs3-immigrants0.25-search.prunerniche-training.lam0.5-s2"
    assert cfg.fitness.last_epochs == 1 and cfg.training.lam == 1.0  # the config itself is unchanged
    plain = cmp.way_config(cfg, "niche", 2)
    assert cmp.objective_key(variant) != cmp.objective_key(plain)  # its own objective: it trains and scores otherwise
    assert cmp.objective_key(cmp.way_config(cfg, 'niche[search.pruner="niche"]', 2)) == cmp.objective_key(plain)
    for bad, message in (
        ("niche[data.val_fraction=0.3]", "\\[data\\] is the same for every way"),
        ('niche[fitness.name="mean"]', "fitness.name is the same for every way"),
        ('niche[search.sampler="random"]', "search.sampler is the same for every way"),
        ("niche[fitness.last_epochs=0]", "\\[fitness\\] last_epochs must be >= 1, got 0"),
        ("niche[training.nope=1]", "unknown key\\(s\\) \\['nope'\\] in \\[training\\]"),
    ):
        with pytest.raises(UsageError, match=f"way {re.escape(repr(bad))}: {message}"):
            cmp.way_config(cfg, bad, 0)


def test_fitness_over_the_last_epochs_is_the_mean_of_their_fitness(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:  # learnable: the class is the brightest quadrant, so accuracy moves per epoch
        x = torch.rand(n, 1, 8, 8, generator=g)
        return Split(x, x.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)).flatten(1).argmax(1))

    data = Dataset(name="quadrants", train=split(256), val=split(64), test=split(16), num_classes=4,
                   class_names=("a", "b", "c", "d"))
    ref = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with pytest.raises(ValueError, match="fitness_epochs must be an integer >= 1, got 0"):
        gms.GMObjective(data, reference=ref, fitness_epochs=0, cache_dir=tmp_path / "cache", artifact_store=None)
    objective = gms.GMObjective(data, reference=ref, attack="fgsm", attack_params={"eps": 0.1}, fitness="mean",
                                epochs=3, fitness_epochs=2, batch_size=16, cache_dir=tmp_path / "cache",
                                artifact_store=None)
    study = gms.create_study(study_name="last", storage=None, sampler=gms.NicheEvolutionSampler(
        population_size=1, n_children=1, seed=0, epoch_schedule=None, budget=SizeBudget(max_blocks=3)))
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    curve = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]  # each epoch's fitness
    assert len(curve) == 3 and trial.user_attrs["epochs"] == 3 and curve[1] != curve[2]
    assert trial.value == pytest.approx((curve[1] + curve[2]) / 2)  # not the last epoch's alone
    clean, adv = trial.user_attrs["clean_acc"], trial.user_attrs["adv_acc"]
    assert (clean + adv) / 2 == pytest.approx(curve[-1])  # the stored accuracies: the trained network's
    assert "over the last 2 epochs" in objective.describe()
