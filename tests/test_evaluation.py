"""Evaluation: both fooling-rate definitions, transfer matrices, gradient-masking checks, experiment helpers."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gmsearch as gms
from gmsearch import paper as ex
from gmsearch.attacks import AdversarialSet
from gmsearch.data import Split
from gmsearch.evaluation import (
    EvalResult,
    accuracy,
    attack_success_rate,
    evaluate,
    fooling_rate,
    fooling_rate_from_predictions,
    gradient_masking_checks,
    transfer_matrix,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- hand-built predictions
#
# index      0  1  2  3  4  5  6  7
# y          0  1  2  0  1  2  0  1
# net        0  1  2  0  1  0  1  1   correct: 0 1 2 3 4 7      (clean acc 6/8)
# reference  0  1  2  1  2  2  0  1   correct: 0 1 2 5 6 7
# net (adv)  0  2  2  1  1  0  1  0   correct: 0 2 4            (adv acc 3/8)
#
# 4.2.2 (both correct: 0 1 2 7): fooled 1 7          -> 2/4
# 4.2.3 (reference correct: 0 1 2 5 6 7): fooled 1 5 6 7 -> 4/6
# attack success (net correct: 0 1 2 3 4 7): fooled 1 3 7 -> 3/6

Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
NET = torch.tensor([0, 1, 2, 0, 1, 0, 1, 1])
REF = torch.tensor([0, 1, 2, 1, 2, 2, 0, 1])
NET_ADV = torch.tensor([0, 2, 2, 1, 1, 0, 1, 0])


class Lookup(nn.Module):
    """Predicts the class written (times 0.1) in one input channel: hand-built predictions as a module."""

    def __init__(self, channel: int, classes: int = 3) -> None:
        super().__init__()
        self.channel = channel
        self.classes = classes

    def forward(self, x: Tensor) -> Tensor:
        return F.one_hot((x[:, self.channel, 0, 0] * 10).round().long(), self.classes).float()


def _images(net_pred: Tensor, ref_pred: Tensor) -> Tensor:
    return torch.stack([net_pred, ref_pred], dim=1).float().div(10).view(-1, 2, 1, 1)


def test_fooling_rates_from_hand_built_predictions() -> None:
    assert fooling_rate_from_predictions(NET, NET_ADV, Y, reference_pred=REF) == pytest.approx(2 / 4)
    assert fooling_rate_from_predictions(
        None, NET_ADV, Y, reference_pred=REF, definition="reference"
    ) == pytest.approx(4 / 6)
    assert fooling_rate_from_predictions(NET, NET_ADV, Y) == pytest.approx(3 / 6)  # no reference: net alone
    never_right = (Y + 1) % 3
    assert math.isnan(fooling_rate_from_predictions(NET, NET_ADV, Y, reference_pred=never_right))
    assert math.isnan(
        fooling_rate_from_predictions(None, NET_ADV, Y, reference_pred=never_right, definition="reference")
    )
    with pytest.raises(ValueError, match="needs the reference"):
        fooling_rate_from_predictions(NET, NET_ADV, Y, definition="reference")
    with pytest.raises(ValueError, match="4.2.2"):
        fooling_rate_from_predictions(NET, NET_ADV, Y, definition="other")  # type: ignore[arg-type]


def test_fooling_rate_and_evaluate_on_modules_give_the_same_exact_numbers() -> None:
    net, ref = Lookup(0), Lookup(1)
    x, x_adv = _images(NET, REF), _images(NET_ADV, REF)
    assert fooling_rate(net, x, x_adv, Y, reference=ref) == pytest.approx(0.5)
    assert fooling_rate(net, x, x_adv, Y, reference=ref, definition="reference") == pytest.approx(4 / 6)
    assert attack_success_rate(net, x, x_adv, Y) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="reference"):
        fooling_rate(net, x, x_adv, Y, definition="reference")

    split = Split(x, Y)
    adv = AdversarialSet(x=x_adv, y=Y, attack="hand-built", source="hand-built")
    result = evaluate(net, split, adversarial=adv, reference=ref)
    assert result == EvalResult(
        clean_acc=pytest.approx(0.75), adv_acc=pytest.approx(0.375), fooling_rate=pytest.approx(0.5),
        fooling_rate_reference=pytest.approx(4 / 6), attack_success_rate=pytest.approx(0.5),
    )
    # backward compatible: no adversarial set -> clean accuracy only; no reference -> old fallback
    assert evaluate(net, split) == EvalResult(clean_acc=pytest.approx(0.75))
    no_ref = evaluate(net, split, adversarial=adv)
    assert no_ref.fooling_rate == pytest.approx(0.5) and no_ref.fooling_rate_reference is None
    assert set(result.as_dict()) == {"clean_acc", "adv_acc", "fooling_rate", "fooling_rate_reference",
                                     "attack_success_rate"}
    with pytest.raises(ValueError, match="another split"):
        evaluate(net, split, adversarial=AdversarialSet(x=x_adv[:4], y=Y[:4], attack="", source=""))


# --------------------------------------------------------------------------- transfer matrix


def _linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_transfer_matrix_shape_worst_case_and_cache(tmp_path: Path) -> None:
    a, b, c = _linear(0), _linear(1), _linear(2)
    torch.manual_seed(3)
    x = torch.rand(40, 1, 4, 4)
    part = Split(x, a(x).argmax(1).detach())  # labels a gets right: a is 100% accurate
    m = transfer_matrix({"a": a, "b": b}, {"a": a, "c": c}, part, attack="fgsm", attack_params={"eps": 0.3},
                        cache_dir=tmp_path)
    assert m.sources == ("a", "b") and m.targets == ("a", "c")
    assert len(m.adv_acc) == 2 and all(len(row) == 2 for row in m.adv_acc)
    assert m.white_box == ((True, False), (False, False))
    assert m.clean_acc[0] == 1.0 and m.source_clean_acc[0] == 1.0
    for t in range(2):
        assert m.worst_case[t] == min(m.adv_acc[t])
        assert m.per_image_worst_case[t] <= m.worst_case[t] + 1e-9
    adv_b = gms.attacks.create("fgsm", eps=0.3)(b, x, part.y)
    assert m.cell("b", "c") == pytest.approx(accuracy(c, adv_b, part.y))
    assert len(list(tmp_path.glob("adv-fgsm-*.pt"))) == 2  # one cached set per source
    again = transfer_matrix({"a": a, "b": b}, {"a": a, "c": c}, part, attack="fgsm", attack_params={"eps": 0.3},
                            cache_dir=tmp_path, exclude_white_box=True)
    assert again.adv_acc == m.adv_acc
    assert again.worst_case[0] == m.adv_acc[0][1]  # the white-box cell a->a left out
    text = m.to_text(title="T")
    assert text.startswith("T") and "worst" in text and "*" in text and "fgsm(eps=0.3)" in text
    json.dumps(m.as_dict())
    with pytest.raises(ValueError, match="at least one source"):
        transfer_matrix({}, {"a": a}, part)


# --------------------------------------------------------------------------- gradient masking


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


class Quantised(nn.Module):
    """Rounds its input to 4 grey levels: zero input gradient everywhere (gradient masking by construction)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 4) / 4)


@pytest.fixture(scope="module")
def digits_nets() -> tuple[gms.datasets.Dataset, nn.Module, nn.Module]:
    data = gms.datasets.load("digits", seed=0, image_size=8)
    net, surrogate = _cnn(0), _cnn(1)
    gms.train(net, data, lam=0.0, epochs=8, seed=0)
    gms.train(surrogate, data, lam=0.0, epochs=8, seed=1)
    return data, net, surrogate


def test_gradient_masking_checks_pass_for_a_plain_network(
    digits_nets: tuple[gms.datasets.Dataset, nn.Module, nn.Module],
) -> None:
    data, net, surrogate = digits_nets
    report = gradient_masking_checks(net, data, eps=(0.0, 0.1, 0.2, 0.4), steps=10, surrogate=surrogate, limit=200)
    acc = report.white_box_acc
    assert acc[0] > 0.8, "the network learned the digits"
    assert all(b <= a + 0.02 for a, b in itertools.pairwise(acc)), "monotone-ish curve"
    assert acc[-1] <= 0.05, "white-box PGD at a large eps leaves almost nothing"
    assert report.monotone and report.reaches_low and report.multi_step_stronger and report.white_box_stronger
    assert report.passed and "no sign of gradient masking" in report.to_text()
    assert report.transfer_acc is not None and len(report.transfer_acc) == 4
    json.dumps(report.as_dict())


def test_gradient_masking_checks_flag_a_masked_network(
    digits_nets: tuple[gms.datasets.Dataset, nn.Module, nn.Module],
) -> None:
    data, net, surrogate = digits_nets
    report = gradient_masking_checks(Quantised(net), data, eps=(0.0, 0.1, 0.2, 0.4), steps=10,
                                     surrogate=surrogate, limit=200)
    assert not report.reaches_low, "zero gradients: white-box PGD goes nowhere"
    assert report.white_box_stronger is False, "transfer from the surrogate beats the white-box attack"
    assert not report.passed and "POSSIBLE GRADIENT MASKING" in report.to_text()
    with pytest.raises(ValueError, match="increasing"):
        gradient_masking_checks(net, data, eps=(0.2, 0.1))


# --------------------------------------------------------------------------- experiment helpers


def test_paper_table_text_and_dict() -> None:
    table = ex.PaperTable(
        key="t", title="Title", columns=["A", "B", "C"],
        rows=[("acc", [0.5, 0.25, float("nan")]), ("other", [1.0, None, 0.0])],
        paper={"acc": [40.0, None, 12.5]}, notes=["note"], wrap=2,
    )
    text = table.to_text()
    assert "50.00% [40.00%]" in text and "25.00%" in text and "[12.50%]" in text and text.endswith("note")
    assert text.count("acc") == 2, "wrapped into two blocks of columns"
    assert table.value("acc", "B") == 0.25
    data = table.as_dict()
    assert data["rows"][0][1][2] is None  # NaN is stored as None
    json.dumps(data)
    plain = ex.PaperTable(key="d", title="D", columns=["x"], rows=[("d", [0.1234])], percent=False)
    assert "0.123" in plain.to_text() and "%" not in plain.to_text()


def test_settings_quick_defaults_and_overrides() -> None:
    quick = ex.ExperimentSettings.create(quick=True)
    assert quick.quick and quick.image_size == ex.QUICK["image_size"] and quick.epochs == ex.QUICK["epochs"]
    args = ex.experiment_parser("x").parse_args(["--quick", "--epochs", "5", "--dataset", "some.npz"])
    settings = ex.settings_from_args(args)
    assert settings.epochs == 5 and settings.population == ex.QUICK["population"] and settings.dataset == "some.npz"
    full = ex.settings_from_args(ex.experiment_parser("x").parse_args([]))
    assert not full.quick and full.generations == ex.FULL["generations"] and full.image_size is None
    assert full.label() == "digits" and quick.label() == "digits@8px"
    assert ex.dataset_label("/a/b/cifar10_reduced.npz") == "cifar10_reduced"
    assert ex.paper_dataset("fashion_mnist") == "FMNIST" and ex.paper_dataset("/x/mnist.npz") == "MNIST"


def test_load_data_resizes_and_caps_per_class() -> None:
    data = ex.load_data("digits", image_size=8, max_train_per_class=20, max_test_per_class=5)
    assert data.input_shape == (1, 8, 8)
    assert torch.bincount(data.train.y, minlength=10).max() <= 20
    assert torch.bincount(data.test.y, minlength=10).tolist() == [5] * 10
    small = gms.datasets.resize_dataset(data, 4)
    assert small.input_shape == (1, 4, 4) and float(small.train.x.min()) >= 0 and float(small.train.x.max()) <= 1
