"""What ``gmsearch run`` prints: a plan in plain words and, at the end, only commands that work."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import optuna
import torch
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from gmsearch import cli, config, pipeline
from gmsearch.data import Dataset, Split

README = Path(__file__).resolve().parents[1] / "README.md"


def _study(name: str, directions: list[str], values: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(study_name=name, directions=directions)
    for v in values:
        study.add_trial(create_trial(values=v, params={"n": 1}, distributions={"n": IntDistribution(0, 2)},
                                     user_attrs={"clean_acc": 0.9333333333, "adv_acc": 0.41666666667}))
    return study


def _parses(command: str) -> None:
    """``command`` (``gmsearch ...``) is accepted by the parser as it is printed."""
    words = shlex.split(command)
    assert words[0] == "gmsearch"
    cli.make_parser().parse_args(words[1:])


def test_after_a_run_the_best_trial_is_rounded_and_the_commands_parse() -> None:
    lines = cli.next_steps(_study("my study", ["maximize"], [[0.4], [0.41666666667]]), "sqlite:////tmp/a b/s.db")
    assert lines[0] == "best: trial 1, fitness 0.4167 (val clean 0.9333, adv 0.4167)"
    report, export = lines[1].removeprefix("report: "), lines[2].removeprefix("export: ")
    assert export.endswith("--study 'my study' --best") and "'sqlite:////tmp/a b/s.db'" in export
    _parses(report)
    _parses(export)


def test_after_a_pareto_run_export_names_a_trial_of_the_front() -> None:
    study = _study("p", ["maximize", "maximize"], [[0.9, 0.1], [0.5, 0.5], [0.4, 0.4]])
    lines = cli.next_steps(study, "sqlite:///s.db")
    assert lines[0] == "pareto front: trial 0 (values 0.9000, 0.1000); trial 1 (values 0.5000, 0.5000)"
    assert lines[-1] == "export: gmsearch export --storage sqlite:///s.db --study p --trial 0"  # --best would fail
    _parses(lines[-1].removeprefix("export: "))


def test_without_a_finished_trial_no_export_is_offered() -> None:
    study = optuna.create_study(study_name="f")
    study.add_trial(create_trial(state=TrialState.FAIL))
    assert cli.next_steps(study, "sqlite:///s.db") == ["report: gmsearch report --storage sqlite:///s.db --study f "
                                                        "--out report.html"]


def test_the_plan_reads_as_words() -> None:
    def split(n: int) -> Split:
        return Split(torch.rand(n, 1, 8, 8), torch.arange(n) % 4)

    data = Dataset(name="digits[30,None]", train=split(8), val=split(4), test=split(4), num_classes=4,
                   class_names=("a", "b", "c", "d"))
    one = config.parse({"data": {"max_train_per_class": 30}, "search": {"generations": 1, "n_children": 1},
                        "study": {"cache_dir": "/nonexistent/cache"}})
    text = "\n".join(pipeline.plan(one, data, "cpu"))
    assert "digits (at most 30 train images per class): train 8" in text and "[30,None]" not in text
    assert "population 4 x 1 child, 1 generation (8 trials), 20 epochs per child, lam" in text  # no "+5 every 10"
    many = config.parse({"search": {"generations": 50}, "study": {"cache_dir": "/nonexistent/cache"}})
    assert "20 epochs per child (+5 every 10 generations: 40 in generation 50)" in "\n".join(
        pipeline.plan(many, data, "cpu"))


def test_readme_shows_what_the_cli_accepts_and_the_reference_training() -> None:
    text = README.read_text()
    assert "`gmsearch export --storage URL --study NAME [--best \\| --trial N]" in text  # --best is the default
    first = re.search(r"```python\n(.*?)```", text, re.S)
    assert first is not None
    block = first.group(1)
    assert "logging.basicConfig(level=logging.INFO)" in block  # the reference's epochs show while it trains
    assert 'gms.references.get("hand_a", data, epochs=30)' in block
