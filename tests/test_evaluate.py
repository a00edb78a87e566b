"""`gmsearch evaluate --quick`: the transfer matrix of a tiny study against several sources and attacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch

from gmsearch import attacks, cache, cli, config, pipeline
from gmsearch.evaluation.metrics import predict
from gmsearch.report._html import render_report
from gmsearch.report.evaluate import TransferEvaluation, load_transfer
from gmsearch.search import schema

optuna.logging.set_verbosity(optuna.logging.WARNING)

SOURCES = ["reference", "hand_b", "reference_at"]
ATTACKS = ["fgsm", "mi_fgsm"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Iterator[tuple[str, Path]]:
    """A 2-trial study made by the pipeline (it records its config), 8x8 digits, 1-epoch children."""
    work = tmp_path_factory.mktemp("evaluate")
    cfg = config.parse({
        "seed": 0, "device": "cpu",
        "data": {"name": "digits", "image_size": 8},
        "reference": {"name": "hand_a", "epochs": 2},
        "attack": {"name": "pgd_linf", "params": {"steps": 2}},
        "search": {"population_size": 2, "n_children": 1, "generations": 1, "epochs": 1},
        "study": {"name": "tiny", "storage": f"sqlite:///{work / 'study.db'}",
                  "artifacts": str(work / "artifacts"), "cache_dir": str(work / "cache")},
    })
    built = pipeline.assemble(cfg)
    built.study.optimize(built.objective, n_trials=2)
    yield cfg.study.storage, work / "cache"


def _evaluate(storage: str, *extra: str) -> int:
    return cli.main(["evaluate", "--storage", storage, "--study", "tiny", "--quick", *extra])


def test_quick_matrix_worst_all_cache_and_storage(
    study: tuple[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, cache_dir = study
    assert _evaluate(storage, "--sources", *SOURCES, "--attacks", *ATTACKS) == 0
    out = capsys.readouterr().out
    assert "training source hand_b" in out and "training reference_at" in out and "adversarial set" in out
    stored = optuna.load_study(study_name="tiny", storage=storage)
    result = load_transfer(stored)
    assert result is not None
    assert result.networks[1:] == ("Ref", "Ref+GM", "HE+GM") and result.networks[0].startswith("NE+GM (trial ")
    assert result.pairs == tuple(f"{s}/{a}" for s in SOURCES for a in ATTACKS)
    assert len(result.acc) == 4 and all(len(row) == 6 for row in result.acc)
    assert result.n_images == 64
    for n in range(4):
        assert result.worst[n] == min(result.acc[n])
        assert result.all[n] <= result.worst[n]
    # Ref on its own sets is white-box: fgsm from the reference fools it on many images
    assert result.acc[1][0] < result.clean[1]

    # "all" by hand: per-image correctness of Ref on every cached set
    files = sorted(cache_dir.glob("adv-*-test-*.pt"))
    assert len(files) == 6 + 4  # six transfer sets, four white-box ones
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    cfg = config.parse(stored.user_attrs[schema.CONFIG_KEY])
    data = pipeline.load_data(cfg, device="cpu")
    ref = pipeline.make_reference(cfg, data, device="cpu")
    y = data.test.y[:64]
    correct = torch.ones_like(y, dtype=torch.bool)
    for file in files:
        if "white-box" in file.name:
            continue
        correct &= predict(ref, cache.load_tensors(file)["x"]) == y
    assert result.all[1] == pytest.approx(correct.float().mean().item())

    # a second run makes nothing: every set comes from the cache
    calls: list[str] = []
    original = attacks.Attack.__call__

    def counting(self: attacks.Attack, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(self.describe())
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(attacks.Attack, "__call__", counting)
    assert _evaluate(storage, "--sources", *SOURCES, "--attacks", *ATTACKS) == 0
    assert "training" not in capsys.readouterr().out  # sources, reference_at, Ref+GM and HE+GM from the cache
    assert calls == []
    assert {f: f.stat().st_mtime_ns for f in sorted(cache_dir.glob("adv-*-test-*.pt"))} == mtimes
    again = load_transfer(optuna.load_study(study_name="tiny", storage=storage))
    assert again == result

    html = render_report(stored)
    assert "Transfer matrix" in html and "heatmap" in html


def test_unknown_source_or_attack_is_one_line_exit_2(
    study: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    storage, _ = study
    assert _evaluate(storage, "--sources", "reference", "alexnet") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown source 'alexnet'" in err and "resnet18" in err
    assert _evaluate(storage, "--sources", "ensemble:reference+nope") == 2
    assert "unknown source 'nope'" in capsys.readouterr().err
    assert _evaluate(storage, "--attacks", "fgsm", "cw") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown attack 'cw'" in err and "mi_fgsm" in err


def test_a_study_without_its_config_asks_for_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    optuna.create_study(study_name="tiny", storage=storage)  # no recorded run configuration
    assert _evaluate(storage, "--sources", "reference", "--attacks", "fgsm") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not record its run configuration" in err and "--config" in err


def test_matrix_round_trips_through_a_dict() -> None:
    m = TransferEvaluation(networks=("a",), pairs=("r/fgsm", "r/mi_fgsm"), acc=((0.5, 0.25),), worst=(0.25,),
                           all=(0.125,), clean=(1.0,), white_box=(0.0,), attacks={"fgsm": "fgsm(eps=0.1)"},
                           split="test", n_images=8)
    assert TransferEvaluation.from_dict(m.as_dict()) == m
    assert "white-box" in m.to_text() and "r/mi_fgsm" in m.to_text()


def test_another_study_as_source_and_sgm_only_where_there_are_skips(
    study: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import gmsearch as gms
    from gmsearch.report.evaluate import usable

    storage, _ = study
    assert _evaluate(storage, "--sources", "study:tiny", "--attacks", "fgsm") == 0
    out = capsys.readouterr().out
    assert "source study:tiny: its best candidate, trial " in out
    result = load_transfer(optuna.load_study(study_name="tiny", storage=storage))
    assert result is not None and result.pairs == ("study:tiny/fgsm",)
    assert result.acc[0][0] < result.clean[0]  # NE+GM's own FGSM set is white-box for it
    assert _evaluate(storage, "--sources", "study:", "--attacks", "fgsm") == 2
    assert "unknown source 'study:'" in capsys.readouterr().err

    sgm, fgsm = attacks.create("sgm"), attacks.create("fgsm")
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    assert not usable(sgm, plain) and usable(fgsm, plain)
    assert usable(sgm, gms.build(gms.zoo.genome("hand_a"), 1, 10, 8))  # sum/concat blocks: skips


def test_transfer_matrix_script_averages_seeds_and_pairs_ne_gm_with_baselines(
    study: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import transfer_matrix

    def seed(ne: float, ref_gm: float) -> TransferEvaluation:
        nets = ("NE+GM (trial 3)", "Ref", "Ref+GM", "HE+GM")
        acc = ((ne, ne + 0.1), (0.0, 0.1), (ref_gm, 0.9), (0.5, 0.5))
        return TransferEvaluation(networks=nets, pairs=("r/a", "r/b"), acc=acc, worst=tuple(min(a) for a in acc),
                                  all=(ne - 0.1, 0.0, ref_gm - 0.1, 0.4), clean=(1.0,) * 4, white_box=(0.0,) * 4,
                                  attacks={}, split="test", n_images=10)

    table = transfer_matrix.aggregate([seed(0.6, 0.5), seed(0.8, 0.4)])
    assert table["rows"]["worst"]["NE+GM"] == [0.6, 0.8] and table["rows"]["r/b"]["Ref+GM"] == [0.9, 0.9]
    text = "\n".join(transfer_matrix.lines(table, [0, 1], 1.0))
    assert "70.0 +- 14.1" in text  # NE+GM worst: mean 0.7, sd 0.1414
    # NE+GM - Ref+GM on worst: diffs 0.1, 0.4: mean 0.25, sd 0.2121, t(0.95, 1) = 6.3138 -> 0.25 - 0.9470
    assert "vs Ref+GM  worst +25.0 (>= -69.7, 2/2)" in text

    renamed = transfer_matrix.templated(seed(0.6, 0.5), {"r": "study:x-s{seed}"})
    assert renamed.pairs == ("study:x-s{seed}/a", "study:x-s{seed}/b")  # seeds' sources line up by template

    storage, _ = study
    assert transfer_matrix.main(["--quick", "--storage", storage, "--study", "tiny", "--seeds", "0",
                                 "--sources", "reference", "--attacks", "fgsm", "mi_fgsm"]) == 0
    out = capsys.readouterr().out
    assert "reference/mi_fgsm" in out and "vs HE+GM" in out and "(>= n/a, " in out
