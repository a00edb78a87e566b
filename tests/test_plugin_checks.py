"""Every plugin's output is checked and every plugin error names the plugin (fitness, attacks, registries)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.trial import TrialState
from torch import Tensor, nn

import gmsearch as gms
from gmsearch import attacks, runner
from gmsearch.data import Dataset
from gmsearch.errors import UsageError
from gmsearch.registry import PluginError, Registry
from gmsearch.search import fitness
from gmsearch.search.schema import FAIL_REASON_KEY, WEIGHTS_KEY


@pytest.fixture
def plugin() -> Iterator[Callable[..., Any]]:
    """``plugin(registry, name)`` decorates with ``registry``'s register (``attacks.register`` for attacks) and
    unregisters ``name`` after the test."""
    added: list[tuple[Registry[Any], str]] = []

    def add(registry: Registry[Any], name: str) -> Callable[[Any], Any]:
        added.append((registry, name))
        return attacks.register(name) if registry is attacks.registry else registry.register(name)

    yield add
    for registry, name in added:
        registry.unregister(name)


# --------------------------------------------------------------------------- fitness


def test_a_fitness_value_that_is_not_a_finite_number_names_the_plugin(plugin: Callable[..., Any]) -> None:
    plugin(fitness.registry, "t_nan")(lambda clean_acc, adv_acc: float("nan"))
    plugin(fitness.registry, "t_text")(lambda clean_acc, adv_acc: "high")
    plugin(fitness.registry, "t_boom")(lambda clean_acc, adv_acc: 1 / 0)

    def short(clean_acc: float, adv_acc: float) -> tuple[float, float]:
        return (clean_acc,)  # type: ignore[return-value]

    plugin(fitness.registry, "t_short")(short)
    with pytest.raises(fitness.FitnessValueError, match="fitness 't_nan' returned nan; a fitness must return a finite"):
        fitness.create("t_nan")(0.5, 0.5)
    with pytest.raises(fitness.FitnessValueError, match="'t_text' returned 'high'"):
        fitness.create("t_text")(0.5, 0.5)
    with pytest.raises(fitness.FitnessValueError, match="fitness 't_boom': ZeroDivisionError"):
        fitness.create("t_boom")(0.5, 0.5)
    with pytest.raises(fitness.FitnessValueError, match="'t_short' returned .*a tuple of 2 finite numbers"):
        fitness.create("t_short")(0.5, 0.5)
    assert fitness.create("pareto")(0.5, 0.25) == (0.5, 0.25)
    assert fitness.create("mean")(torch.tensor(0.5), 0.25) == 0.375  # numbers of any kind come back as floats
    assert fitness.n_objectives(fitness.create("pareto")) == 2


def test_fitness_parameters_are_checked_before_any_data(plugin: Callable[..., Any]) -> None:
    with pytest.raises(UsageError, match=r"\[fitness\] params = \{'weight': 2\}: fitness 'weighted': .*weight must "
                                         r"be in \[0, 1\], got 2"):
        fitness.check("weighted", {"weight": 2})
    with pytest.raises(UsageError, match="fitness 'mean': .*unexpected keyword argument 'weight'"):
        fitness.check("mean", {"weight": 0.5})
    plugin(fitness.registry, "t_nan")(lambda clean_acc, adv_acc: float("nan"))
    with pytest.raises(UsageError, match=r"\[fitness\] fitness 't_nan' returned nan"):
        fitness.check("t_nan")
    fitness.check("weighted", {"weight": 0.3})


def test_a_study_whose_trials_all_fail_for_one_plugin_reason_stops_early(
    plugin: Callable[..., Any], tiny_data: Callable[[int], Dataset], tmp_path: Path, one_thread: None
) -> None:
    """A fitness that returns NaN for real accuracies fails its trials, names itself, keeps no weights, and the
    run stops after three such trials instead of 25."""
    plugin(fitness.registry, "t_nan_late")(lambda clean_acc, adv_acc: float("nan"))
    data = tiny_data(32)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    objective = gms.GMObjective(data, reference=reference, attack="fgsm", attack_params={"eps": 0.1}, epochs=1,
                                fitness="t_nan_late", cache_dir=tmp_path / "cache", artifact_store=tmp_path / "art")
    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, generations=1, seed=0)
    study = gms.create_study(study_name="nan", storage=None, sampler=sampler)
    runner.optimize_until_finished(study, objective)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state == TrialState.FAIL for t in trials)
    reason = "fitness 't_nan_late' returned nan; a fitness must return a finite number"
    assert all(t.user_attrs[FAIL_REASON_KEY] == reason for t in trials)
    assert not any(WEIGHTS_KEY in t.user_attrs for t in trials)
    assert not [p for p in (tmp_path / "art").rglob("*") if p.is_file()], "no weights kept for failed trials"
    summary = runner.failure_summary(study)
    assert summary is not None and reason in summary


# --------------------------------------------------------------------------- plugins that fail to start


def test_a_plugin_whose_constructor_raises_is_named(plugin: Callable[..., Any]) -> None:
    class Broken:
        def __init__(self, **kwargs: Any) -> None:
            raise RuntimeError("no GPU driver")

    plugin(gms.pruners.registry, "t_broken")(Broken)
    with pytest.raises(PluginError, match="pruner 't_broken': RuntimeError: no GPU driver"):
        gms.pruners.create("t_broken")

    @plugin(attacks.registry, "t_broken_attack")
    class BrokenAttack(attacks.Attack):
        def __post_init__(self) -> None:
            raise KeyError("missing table")

    with pytest.raises(PluginError, match="attack 't_broken_attack': KeyError: 'missing table'"):
        attacks.create("t_broken_attack", eps=0.1)
    with pytest.raises(ValueError, match="attack 'pgd_linf': eps must be >= 0"):  # still a ValueError
        attacks.create("pgd_linf", eps=-1.0)


# --------------------------------------------------------------------------- attacks


def test_an_attack_budget_that_covers_every_image_is_refused() -> None:
    for name in ("pgd_linf", "fgsm", "mi_fgsm"):
        with pytest.raises(ValueError, match=f"attack '{name}': eps 5 is an L-inf budget .* must be < 1"):
            attacks.create(name, eps=5)
    attacks.create("pgd_linf", eps=0.99)
    l2 = attacks.create("pgd_l2", eps=8.0)  # fine for 1x16x16 images (diameter 16), not for 1x4x4 ones (4)
    l2.check_budget((1, 16, 16))
    with pytest.raises(PluginError, match=r"attack 'pgd_l2': eps 8 is an L2 budget; images of shape \(1, 4, 4\)"):
        l2(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize(("returns", "rule"), [
    (lambda x: x[:, :, :2], r"shape \(2, 1, 2, 8\), dtype torch.float32 on cpu for a chunk of shape \(2, 1, 8, 8\)"),
    (lambda x: x.double(), "dtype torch.float64"),
    (lambda x: x.numpy(), "returned a ndarray"),
    (lambda x: x * 3, r"values in \[.*\].*must lie in \[0, 1\]"),
    (lambda x: x * float("nan"), "NaN counts as outside"),
])
def test_what_an_attack_returns_is_checked_once_and_named(
    plugin: Callable[..., Any], returns: Callable[[Tensor], Any], rule: str
) -> None:
    @plugin(attacks.registry, "t_bad_output")
    class BadOutput(attacks.Attack):
        def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Any:
            return returns(x)

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(PluginError, match=f"attack 't_bad_output': (perturb returned )?.*{rule}"):
        attacks.create("t_bad_output", eps=0.1)(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))


def test_an_attack_that_fails_leaves_no_artifacts_folder(
    plugin: Callable[..., Any], tiny_data: Callable[[int], Dataset], tmp_path: Path
) -> None:
    @plugin(attacks.registry, "t_wrong_shape")
    class WrongShape(attacks.Attack):
        def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Any:
            return x[:1]

    with pytest.raises(PluginError, match="'t_wrong_shape': perturb returned shape"):
        gms.GMObjective(tiny_data(8), reference=nn.Sequential(nn.Flatten(), nn.Linear(64, 4)),
                        attack="t_wrong_shape", attack_params={"eps": 0.1}, cache_dir=tmp_path / "cache",
                        artifact_store=tmp_path / "art")
    assert not (tmp_path / "art").exists()
