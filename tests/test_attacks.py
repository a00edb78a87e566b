"""Tests for gmsearch.attacks: torchattacks agreement, budgets, model hygiene, ensembles, caching."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from gmsearch import attacks
from gmsearch.cache import save_tensors
from gmsearch.registry import UnknownPluginError

torchattacks = pytest.importorskip("torchattacks")
sklearn_datasets = pytest.importorskip("sklearn.datasets")


# --------------------------------------------------------------------------- fixtures


class SmallCNN(nn.Module):
    """Tiny BatchNorm + Dropout CNN for 8x8 digits; normalises its own input."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 2 * 2, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features((x - 0.3) / 0.4))


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def _train(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sklearn digits in [0, 1] as (N, 1, 8, 8): train and a 200-image test split."""
    d = sklearn_datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=g)
    x, y = x[perm], y[perm]
    return x[200:], y[200:], x[:200], y[:200]


@pytest.fixture(scope="module")
def models(digits: tuple[Tensor, ...]) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Two CNNs (different seeds) and a linear model, trained for a fraction of a second."""
    xtr, ytr, _, _ = digits
    torch.manual_seed(1)
    cnn_a = _train(SmallCNN(), xtr, ytr, steps=100, seed=1)
    torch.manual_seed(2)
    cnn_b = _train(SmallCNN(), xtr, ytr, steps=100, seed=2)
    torch.manual_seed(3)
    lin = _train(Linear(), xtr, ytr, steps=100, seed=3)
    return cnn_a, cnn_b, lin


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture
def clean_registry() -> Iterator[None]:
    before = set(attacks.names())
    yield
    for name in set(attacks.names()) - before:
        attacks.registry.unregister(name)


# --------------------------------------------------------------------------- torchattacks agreement

AGREEMENT: list[tuple[str, dict[str, Any], Any]] = [
    ("pgd_linf", {"eps": 0.2, "alpha": 0.05, "steps": 10, "random_start": False},
     lambda m, n: torchattacks.PGD(m, eps=0.2, alpha=0.05, steps=10, random_start=False)),
    # torchattacks averages the loss over the batch, so its 1e-10 offset on gradient norms acts as
    # n * 1e-10 on per-image norms; we apply 1e-10 per image, which 1e-10 / n reproduces exactly.
    ("pgd_l2", {"eps": 1.0, "alpha": 0.25, "steps": 10, "random_start": False},
     lambda m, n: torchattacks.PGDL2(m, eps=1.0, alpha=0.25, steps=10, random_start=False,
                                     eps_for_division=1e-10 / n)),
    ("fgsm", {"eps": 0.15}, lambda m, n: torchattacks.FGSM(m, eps=0.15)),
    ("mi_fgsm", {"eps": 0.2, "alpha": 0.05, "steps": 10, "decay": 1.0},
     lambda m, n: torchattacks.MIFGSM(m, eps=0.2, alpha=0.05, steps=10, decay=1.0)),
]


@pytest.mark.parametrize(("name", "params", "reference"), AGREEMENT, ids=[a[0] for a in AGREEMENT])
@pytest.mark.parametrize("which", [0, 2], ids=["cnn", "linear"])
def test_matches_torchattacks(
    digits: tuple[Tensor, ...], models: tuple[nn.Module, ...], name: str, params: dict[str, Any],
    reference: Any, which: int,
) -> None:
    _, _, x, y = digits
    model = models[which]
    model.train()  # both must switch to eval themselves (BatchNorm/Dropout would differ)
    ours = attacks.create(name, **params, batch_size=64)(model, x, y)  # chunked: must not matter
    assert model.training
    theirs = reference(model, len(x))(x, y)
    model.eval()
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    acc_ours, acc_theirs = accuracy(model, ours, y), accuracy(model, theirs, y)
    assert acc_ours == acc_theirs
    assert accuracy(model, x, y) - acc_ours > 0.2  # the comparison is not vacuous
    # Summed vs averaged loss differs only by rounding (a sign flip of a near-zero gradient at most).
    diff = (ours - theirs).abs()
    assert diff.max() <= 1e-5 or (diff > 1e-5).float().mean() < 1e-3


def test_pgd_l2_close_to_default_torchattacks(
    digits: tuple[Tensor, ...], models: tuple[nn.Module, ...]
) -> None:
    """With torchattacks' own offset the two differ only on images it barely moves: same accuracy."""
    _, _, x, y = digits
    model = models[0]
    ours = attacks.create("pgd_l2", eps=1.0, alpha=0.25, steps=10, random_start=False)(model, x, y)
    theirs = torchattacks.PGDL2(model, eps=1.0, alpha=0.25, steps=10, random_start=False)(x, y)
    assert abs(accuracy(model, ours, y) - accuracy(model, theirs, y)) <= 2 / len(y)


# --------------------------------------------------------------------------- budgets and effect

RANDOM = [
    ("pgd_linf", {"eps": 0.2, "alpha": 0.05, "steps": 5, "random_start": True}, "linf"),
    ("pgd_l2", {"eps": 1.0, "alpha": 0.3, "steps": 5, "random_start": True}, "l2"),
    ("fgsm", {"eps": 0.2}, "linf"),
    ("mi_fgsm", {"eps": 0.2, "alpha": 0.08, "steps": 5}, "linf"),
]


@pytest.mark.parametrize(("name", "params", "norm"), RANDOM, ids=[a[0] for a in RANDOM])
def test_budget_range_and_effect(
    digits: tuple[Tensor, ...], models: tuple[nn.Module, ...], name: str, params: dict[str, Any], norm: str,
) -> None:
    _, _, x, y = digits
    model = models[0]
    x_adv = attacks.create(name, **params)(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= params["eps"] + 1e-6
    assert size.max() >= 0.5 * params["eps"]  # it actually used the budget
    clean, adv = accuracy(model, x, y), accuracy(model, x_adv, y)
    assert clean > 0.8
    assert adv < clean - 0.3


def test_defaults_follow_design() -> None:
    pgd = attacks.create("pgd_linf")
    assert isinstance(pgd, attacks.PGDLinf)
    assert (pgd.eps, pgd.alpha, pgd.steps, pgd.random_start) == (8 / 255, 2 / 255, 10, True)
    rgb = attacks.default_budget("pgd_linf", in_channels=3)
    assert rgb == {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10}
    grey = attacks.default_budget("pgd_linf", in_channels=1)
    assert grey["eps"] == 0.2 and grey["alpha"] == pytest.approx(grey["eps"] / 4)
    assert attacks.create("pgd_linf", **grey).describe() == (
        "pgd_linf(eps=0.2, alpha=0.05, steps=10, random_start=True, seed=0)"
    )
    assert attacks.default_budget("ensemble", in_channels=1) == {}
    with pytest.raises(UnknownPluginError, match="pgd_linf"):
        attacks.default_budget("nope", in_channels=1)


def test_one_budget_resolver_for_runs_and_paper_scripts() -> None:
    """`gmsearch run` and the paper scripts resolve a budget the same way: L2 scaled to the image size."""
    from gmsearch import config, pipeline

    l2 = attacks.default_budget("pgd_l2", in_channels=1, image_size=(16, 16))
    assert l2["eps"] == pytest.approx(round(2.0 * 16 / 28, 4)) and l2["alpha"] == pytest.approx(round(0.5 * 16 / 28, 4))
    assert attacks.default_budget("pgd_l2", in_channels=3, image_size=(32, 32))["eps"] == 0.5
    assert attacks.default_budget("pgd_l2", in_channels=1)["eps"] == 2.0  # no size given: unscaled
    cfg = config.parse({"attack": {"name": "pgd_l2"}})
    assert pipeline.attack_params(cfg, (1, 16, 16))["eps"] == l2["eps"]
    assert pipeline.attack_params(cfg, (1, 16, 16), overrides={"eps": 1.0})["eps"] == 1.0
    # another attack than the configured one gets its own default, not [attack] params
    cfg = config.parse({"attack": {"name": "pgd_linf", "params": {"eps": 0.1}}})
    assert pipeline.attack_params(cfg, (1, 16, 16))["eps"] == 0.1
    assert pipeline.attack_params(cfg, (1, 16, 16), name="fgsm")["eps"] == 0.2


def test_describe_and_params() -> None:
    atk = attacks.create("pgd_linf", eps=0.2, alpha=0.05, steps=10, random_start=False, batch_size=7)
    assert atk.describe() == "pgd_linf(eps=0.2, alpha=0.05, steps=10, random_start=False)"
    assert atk.params() == {"eps": 0.2, "alpha": 0.05, "steps": 10, "random_start": False, "seed": 0}
    assert repr(atk) == atk.describe()
    assert attacks.create("fgsm", eps=0.1).describe() == "fgsm(eps=0.1)"
    assert attacks.create("mi_fgsm").params()["decay"] == 1.0
    assert set(attacks.names()) >= {"pgd_linf", "pgd_l2", "fgsm", "mi_fgsm", "ensemble"}
    assert attacks.get("pgd_l2") is attacks.PGDL2 and attacks.PGDL2.name == "pgd_l2"


# --------------------------------------------------------------------------- model hygiene


def test_model_mode_and_requires_grad_restored(digits: tuple[Tensor, ...]) -> None:
    _, _, x, y = digits
    torch.manual_seed(0)
    model = SmallCNN()
    model.train()
    model.features[1].eval()  # a mixed-mode model must come back exactly as it was
    model.head[2].bias.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    calls: list[bool] = []
    model.register_forward_pre_hook(lambda m, inp: calls.append(m.training))
    attacks.create("pgd_linf", eps=0.1, alpha=0.05, steps=3)(model, x, y)
    assert calls and not any(calls)  # eval mode during the attack
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_model_restored_when_attack_fails(digits: tuple[Tensor, ...]) -> None:
    _, _, x, y = digits
    model = Linear()
    model.train()

    def boom(module: nn.Module, inputs: Any) -> None:
        raise RuntimeError("boom")

    handle = model.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        attacks.create("fgsm", eps=0.1)(model, x, y)
    handle.remove()
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_attack_under_no_grad(digits: tuple[Tensor, ...], models: tuple[nn.Module, ...]) -> None:
    _, _, x, y = digits
    atk = attacks.create("fgsm", eps=0.1)
    expected = atk(models[2], x, y)
    with torch.no_grad():
        got = atk(models[2], x, y)
    with torch.inference_mode():
        x_inf = x.clone()
    assert torch.equal(got, expected)
    assert torch.equal(atk(models[2], x_inf, y), expected)


# --------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("name", ["pgd_linf", "pgd_l2"])
def test_random_start_reproducible(
    digits: tuple[Tensor, ...], models: tuple[nn.Module, ...], name: str
) -> None:
    _, _, x, y = digits
    model = models[2]
    make = lambda seed, bs=512: attacks.create(name, eps=0.3, alpha=0.05, steps=2, seed=seed, batch_size=bs)  # noqa: E731
    first = make(0)(model, x, y)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(make(0)(model, x, y), first)
    assert not torch.equal(make(1)(model, x, y), first)
    assert torch.allclose(make(0, bs=33)(model, x, y), first, atol=1e-6)  # chunking changes nothing
    no_start = attacks.create(name, eps=0.3, alpha=0.05, steps=2, random_start=False)
    assert not torch.equal(no_start(model, x, y), first)


# --------------------------------------------------------------------------- ensembles


def test_ensemble_attack(digits: tuple[Tensor, ...], models: tuple[nn.Module, ...]) -> None:
    _, _, x, y = digits
    a, b, _ = models
    params = {"eps": 0.15, "alpha": 0.04, "steps": 10, "random_start": False}
    ens_attack = attacks.create("ensemble", attack="pgd_linf", attack_params=params, models=[b])
    x_ens = ens_attack(a, x, y)
    # Same as attacking the averaged-logit model directly, and a list of models works too.
    ensemble = attacks.ModelEnsemble([a, b])
    assert torch.equal(x_ens, attacks.create("pgd_linf", **params)(ensemble, x, y))
    as_list = attacks.EnsembleAttack(attack=attacks.create("pgd_linf", **params))([a, b], x, y)
    assert torch.equal(as_list, x_ens)
    x_from_a = attacks.create("pgd_linf", **params)(a, x, y)  # transfer from one member only
    acc_ens = accuracy(ensemble, x_ens, y)
    assert acc_ens <= accuracy(ensemble, x_from_a, y)
    assert acc_ens < accuracy(ensemble, x, y) - 0.3
    for member in (a, b):  # it fools every member, not just one
        assert accuracy(member, x_ens, y) < accuracy(member, x, y) - 0.3
    assert (x_ens - x).abs().max() <= 0.15 + 1e-6
    assert ens_attack.describe().startswith("ensemble(pgd_linf(eps=0.15, alpha=0.04, steps=10")
    assert "+1 models" in ens_attack.describe()
    assert ens_attack.params()["models"] == [attacks.model_fingerprint(b)]


def test_ensemble_probs_and_weights(digits: tuple[Tensor, ...], models: tuple[nn.Module, ...]) -> None:
    _, _, x, y = digits
    a, b, _ = models
    probs = attacks.ModelEnsemble([a, b], combine="probs")
    with torch.no_grad():
        expected = torch.log((a(x).softmax(1) + b(x).softmax(1)) / 2)
        assert torch.allclose(probs(x), expected, atol=1e-5)
        only_a = attacks.ModelEnsemble([a, b], weights=[1.0, 0.0])
        assert torch.allclose(only_a(x), a(x), atol=1e-6)
    x_adv = attacks.EnsembleAttack(attack="fgsm", attack_params={"eps": 0.2}, combine="probs")([a, b], x, y)
    assert accuracy(probs, x_adv, y) < accuracy(probs, x, y) - 0.3
    with pytest.raises(ValueError, match="combine"):
        attacks.ModelEnsemble([a], combine="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one value per model"):
        attacks.ModelEnsemble([a, b], weights=[1.0])


# --------------------------------------------------------------------------- errors


def test_unknown_attack_lists_available() -> None:
    with pytest.raises(UnknownPluginError) as info:
        attacks.create("pgd_inf")
    assert "pgd_inf" in str(info.value) and "pgd_linf" in str(info.value) and "mi_fgsm" in str(info.value)


def test_bad_parameters() -> None:
    with pytest.raises(TypeError, match=r"'epsilon'.*allowed: eps, alpha, steps, random_start"):
        attacks.create("pgd_linf", epsilon=0.1)
    for bad in ({"eps": -0.1}, {"alpha": 0.0}, {"steps": 2.5}, {"random_start": 1}, {"eps": float("nan")},
                {"batch_size": 0}):
        key = next(iter(bad))
        with pytest.raises(ValueError, match=key):
            attacks.create("pgd_linf", **bad)
    with pytest.raises(TypeError):
        attacks.PGDLinf(0.1)  # type: ignore[call-arg]  # keyword-only


def test_bad_inputs(models: tuple[nn.Module, ...]) -> None:
    model = models[2]
    atk = attacks.create("fgsm", eps=0.1)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        atk(model, x * 255, y)
    with pytest.raises(ValueError, match="int64"):
        atk(model, x, y.int())
    with pytest.raises(ValueError, match="one per image"):
        atk(model, x, y[:3])
    with pytest.raises(ValueError, match=r"4-D.*\(4, 64\)"):
        attacks.adversarial_set(model, x.flatten(1), y, atk)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attacks.adversarial_set(model, x - 0.5, y, atk)
    with pytest.raises(ValueError, match="attack_params"):
        attacks.adversarial_set(model, x, y, atk, attack_params={"eps": 0.2})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_is_never_guessed(models: tuple[nn.Module, ...]) -> None:
    model = Linear()
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with pytest.raises(ValueError, match="cuda"):
        attacks.create("fgsm", eps=0.1)(model.cuda(), x, y)
    x_adv = attacks.create("pgd_linf", eps=0.1, alpha=0.05, steps=2)(model, x.cuda(), y.cuda())
    assert x_adv.device.type == "cuda"
    repeat = attacks.create("pgd_linf", eps=0.1, alpha=0.05, steps=2)(model, x.cuda(), y.cuda())
    assert torch.equal(x_adv, repeat)


# --------------------------------------------------------------------------- plugins


def test_custom_attack_registers(clean_registry: None, models: tuple[nn.Module, ...]) -> None:
    @attacks.register("noise_sign")
    class NoiseSign(attacks.Attack):
        """Random +-eps noise, a baseline."""

        @property
        def stochastic(self) -> bool:
            return True

        def perturb(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor, generator: torch.Generator) -> Tensor:
            return start

        def start(self, x: Tensor, generator: torch.Generator) -> Tensor:
            signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device) * 2 - 1
            return (x + self.eps * signs).clamp(0, 1)

    assert NoiseSign.name == "noise_sign" and "noise_sign" in attacks.names()
    atk = attacks.create("noise_sign", eps=0.1, seed=3)
    assert atk.describe() == "noise_sign(eps=0.1, seed=3)"
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    assert torch.equal(atk(models[2], x, y), atk(models[2], x, y))
    with pytest.raises(TypeError, match="allowed: eps, batch_size, seed"):
        attacks.create("noise_sign", alpha=1.0)
    with pytest.raises(TypeError, match="Attack subclass"):
        attacks.register("not_an_attack")(int)  # type: ignore[type-var]


# --------------------------------------------------------------------------- adversarial sets and caching


class ForwardCounter:
    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        self.calls += 1


def test_adversarial_set_cached(
    tmp_path: Path, digits: tuple[Tensor, ...], models: tuple[nn.Module, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, _, x, y = digits
    model = models[0]
    counter = ForwardCounter(model)
    params = {"eps": 0.2, "alpha": 0.05, "steps": 3}
    first = attacks.adversarial_set(
        model, x, y, "pgd_linf", cache_dir=tmp_path, attack_params=params, tag="val"
    )
    assert counter.calls == 3
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and files[0].name.startswith("adv-pgd_linf-val-")
    assert first.x.shape == x.shape and torch.equal(first.y, y)
    assert first.attack == "pgd_linf(eps=0.2, alpha=0.05, steps=3, random_start=True, seed=0)"
    assert first.source == attacks.model_fingerprint(model) and first.source.startswith("SmallCNN@")
    assert len(first) == len(y) and first.to("cpu").x.device.type == "cpu"
    # Same inputs with the attack given as an instance: loaded, the model is not called.
    with caplog.at_level(logging.WARNING):
        again = attacks.adversarial_set(model, x, y, attacks.create("pgd_linf", **params), cache_dir=tmp_path,
                                        tag="val")
    assert counter.calls == 3 and not caplog.records
    assert torch.equal(again.x, first.x)
    # Uncached computation gives the same tensors.
    assert torch.equal(attacks.adversarial_set(model, x, y, "pgd_linf", attack_params=params).x, first.x)
    # Any change of parameters (seed included), tag, inputs or model means another file.
    attacks.adversarial_set(model, x, y, "pgd_linf", cache_dir=tmp_path, attack_params={**params, "eps": 0.1},
                            tag="val")
    attacks.adversarial_set(model, x, y, "pgd_linf", cache_dir=tmp_path, attack_params={**params, "seed": 1},
                            tag="val")
    attacks.adversarial_set(model, x, y, "pgd_linf", cache_dir=tmp_path, attack_params=params, tag="test")
    attacks.adversarial_set(
        model, x[:50], y[:50], "pgd_linf", cache_dir=tmp_path, attack_params=params, tag="val"
    )
    attacks.adversarial_set(models[1], x, y, "pgd_linf", cache_dir=tmp_path, attack_params=params, tag="val")
    assert len(list(tmp_path.glob("*.pt"))) == 6
    # batch_size changes memory use, not the result: same file.
    attacks.adversarial_set(model, x, y, "pgd_linf", cache_dir=tmp_path,
                            attack_params={**params, "batch_size": 64}, tag="val")
    assert len(list(tmp_path.glob("*.pt"))) == 6
    counter.handle.remove()


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "garbage"])
def test_corrupt_cache_file_regenerated(
    tmp_path: Path, digits: tuple[Tensor, ...], models: tuple[nn.Module, ...],
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    _, _, x, y = digits
    model = models[2]
    first = attacks.adversarial_set(model, x, y, "fgsm", cache_dir=tmp_path, attack_params={"eps": 0.1})
    (path,) = tmp_path.glob("*.pt")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip_bytes":  # tensor storage sits at the end of the archive
        for i in range(len(data) - 2000, len(data) - 1000, 7):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not a torch file")
    counter = ForwardCounter(model)
    with caplog.at_level(logging.WARNING, logger="gmsearch"):
        again = attacks.adversarial_set(model, x, y, "fgsm", cache_dir=tmp_path, attack_params={"eps": 0.1})
    assert counter.calls == 1  # regenerated
    assert any(str(path) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert torch.equal(again.x, first.x)
    caplog.clear()
    attacks.adversarial_set(model, x, y, "fgsm", cache_dir=tmp_path, attack_params={"eps": 0.1})
    assert counter.calls == 1 and not caplog.records  # the rewritten file is good
    counter.handle.remove()


def test_mismatched_cache_file_regenerated(
    tmp_path: Path, digits: tuple[Tensor, ...], models: tuple[nn.Module, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, _, x, y = digits
    model = models[2]
    first = attacks.adversarial_set(model, x, y, "fgsm", cache_dir=tmp_path, attack_params={"eps": 0.1})
    (path,) = tmp_path.glob("*.pt")
    counter = ForwardCounter(model)
    # A valid file written for other inputs, sitting under this key's name.
    save_tensors(path, {"x": torch.zeros_like(x)}, {"kind": "something else"})
    with caplog.at_level(logging.WARNING, logger="gmsearch"):
        again = attacks.adversarial_set(model, x, y, "fgsm", cache_dir=tmp_path, attack_params={"eps": 0.1})
    assert counter.calls == 1 and torch.equal(again.x, first.x)
    assert any(str(path) in r.getMessage() for r in caplog.records)
    counter.handle.remove()


def test_wrong_shape_cache_file_regenerated(
    tmp_path: Path, digits: tuple[Tensor, ...], models: tuple[nn.Module, ...],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, x, y = digits
    model = models[2]
    expected = attacks.adversarial_set(model, x, y, "fgsm", attack_params={"eps": 0.1})
    # A file with the right key and a valid checksum but tensors of the wrong shape.
    monkeypatch.setattr(attacks.FGSM, "__call__", lambda self, model, x, y: x[:10].clone())
    attacks.adversarial_set(model, x, y, "fgsm", cache_dir=tmp_path, attack_params={"eps": 0.1})
    monkeypatch.undo()
    (path,) = tmp_path.glob("*.pt")
    with caplog.at_level(logging.WARNING, logger="gmsearch"):
        again = attacks.adversarial_set(model, x, y, "fgsm", cache_dir=tmp_path, attack_params={"eps": 0.1})
    assert torch.equal(again.x, expected.x)
    assert any(str(path) in r.getMessage() and "expected" in r.getMessage() for r in caplog.records)
    caplog.clear()
    counter = ForwardCounter(model)
    attacks.adversarial_set(model, x, y, "fgsm", cache_dir=tmp_path, attack_params={"eps": 0.1})
    assert counter.calls == 0 and not caplog.records  # the regenerated file was saved
    counter.handle.remove()
