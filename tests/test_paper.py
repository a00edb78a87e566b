"""The paper's pipelines (Tables 1-6, Fig. 3) run end to end in --quick mode, as the README's scripts.

Each example script's ``main`` runs in-process on one shared work folder (the
search, reference and baselines are cached there and reused by the next
table). The numbers of a quick run mean nothing; what must hold is the
table's layout, accuracies in range, the reference's white-box accuracy near
zero, and the table stored on the study.
"""

from __future__ import annotations

import math
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gmsearch as gms
from gmsearch.search.schema import RESULTS_PREFIX

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("paper")


def _run(script: str, key: str, workdir: Path, *args: str) -> dict[str, Any]:
    """Run an example's ``main`` in --quick mode; return the table it stored on the study under ``key``."""
    main: Callable[[list[str]], int] = runpy.run_path(str(REPO / "examples" / script))["main"]
    assert main(["--quick", "--workdir", str(workdir), *args]) == 0
    storage = f"sqlite:///{(workdir / 'experiments.db').resolve()}"
    study = gms.load_study(study_name="paper-digits@8px-hand_a-quick", storage=storage)
    stored: dict[str, Any] = study.user_attrs[RESULTS_PREFIX + key]
    assert stored["text"].startswith(stored["title"]) and stored["settings"]["quick"] is True
    # every table says under its title what budget produced it, beside the paper's
    budget_line = stored["text"].splitlines()[1]
    assert budget_line.startswith("budget: population 3 x 1 children, 1 generation, 5 epochs per child"), budget_line
    assert "[paper: population 4-5 x 2 children, 50 generations" in budget_line
    return stored


def _cells(table: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    return {label: dict(zip(table["columns"], values, strict=True)) for label, values in table["rows"]}


def _in_unit_range(values: list[float | None]) -> bool:
    return all(v is None or (math.isfinite(v) and 0.0 <= v <= 1.0) for v in values)


def test_table1_baselines(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = _run("table1_baselines.py", "table1", workdir, "--top", "2")
    assert table["columns"][:2] == ["Ref.", "Ref.+GM"] and table["columns"][2:] == ["NE+GM 1", "NE+GM 2"]
    cells = _cells(table)
    assert set(cells) == {"Clean Acc.", "Adv. Acc. (L-inf PGD)", "Fooling (4.2.2)"}
    assert all(_in_unit_range(list(row.values())) for row in cells.values())
    assert cells["Clean Acc."]["Ref."] > 0.5, "the reference learned the digits"
    assert cells["Adv. Acc. (L-inf PGD)"]["Ref."] < 0.25, "white-box PGD breaks the reference"
    assert "masking_checks" in table["extra"]
    out = capsys.readouterr().out
    assert "Table 1" in out and "pgd_linf(eps=0.2" in out


def test_table2_transfer(workdir: Path) -> None:
    table = _run("table2_transfer.py", "table2", workdir, "--sources", "resnet18", "vgg11_bn")
    assert table["columns"] == ["Ref.", "Ref.+GM", "NE+GM"]
    assert [label for label, _ in table["rows"]][:2] == ["ResNet-18", "VGG"]
    assert all(_in_unit_range(values) for _, values in table["rows"])


def test_table3_retrain(workdir: Path) -> None:
    table = _run("table3_retrain.py", "table7", workdir, "--targets", "digits")
    labels = [label for label, _ in table["rows"]]
    assert labels == ["digits Clean Acc.", "digits Adv. Acc."] and table["columns"] == ["Ref.", "Ref.+GM", "NE+GM"]
    assert all(_in_unit_range(values) for _, values in table["rows"])


def test_table4_reduced(workdir: Path) -> None:
    table = _run("table4_reduced.py", "table4", workdir)
    assert table["columns"][:3] == ["Ref.", "Ref.+GM", "HE+GM"]
    assert all(_in_unit_range(values) for _, values in table["rows"])


def test_table5_fooling(workdir: Path) -> None:
    table = _run("table5_fooling.py", "table5", workdir)
    assert [label for label, _ in table["rows"]] == ["L-inf PGD", "L2 PGD", "FGSM"]
    assert all(_in_unit_range(values) for _, values in table["rows"])


def test_table6_defenses(workdir: Path) -> None:
    table = _run("table6_defenses.py", "table6", workdir)
    assert len(table["columns"]) == 8 and "JPEG Comp." in table["columns"] and "A.T. (Fast)" in table["columns"]
    fooling = _cells(table)["L-inf PGD (fooling)"]
    assert _in_unit_range(list(fooling.values()))
    assert fooling["Ref."] is not None and fooling["Ref."] > 0.75, "the reference is fooled by its own examples"


def test_fig3_attributions(workdir: Path) -> None:
    table = _run("fig3_attributions.py", "fig3", workdir, "--images", "2", "--distance-images", "10")
    distances = _cells(table)["distance"]
    assert set(distances) == {"Ref.+GM", "NE+GM"}
    assert all(d is not None and d >= 0 for d in distances.values())
    assert list(workdir.glob("*.html")), "the figure was written"
