"""Every bad input of a user's first hour: one line naming the problem, the right exit status, no traceback,
nothing written and no training started (the table is ``benchmarks/cli_errors.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cli_errors import CASES, Case
from gmsearch import cli


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_fast_in_one_line(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GMSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.dont_write_bytecode", True)  # a plugin folder the case wrote gets no __pycache__
    args = case.args(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    trained: list[str] = []
    monkeypatch.setattr("gmsearch.training.loop.run_epochs", lambda *a, **k: trained.append("!"))
    code = cli.main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, (args, err)
    assert len(lines) == 1 and lines[0].startswith("gmsearch"), err
    assert case.says in lines[0], err
    assert "Traceback" not in err
    assert not trained, "no training before the error"
    assert {p for p in tmp_path.rglob("*")} == before, "nothing written"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "unknown GM loss variant")
    with pytest.raises(KeyError, match="cosinus"):
        cli.main([*case.args(tmp_path), "--debug"])


def test_verbose_after_the_subcommand() -> None:
    args = cli.make_parser().parse_args(["run", "x.toml", "-v"])
    assert args.verbose and not args.debug
    assert cli.make_parser().parse_args(["-v", "run", "x.toml"]).verbose
