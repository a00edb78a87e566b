"""examples/seeds.py: the quickstart protocol over seeds, mean +- sample std, paired difference and verdict."""

from __future__ import annotations

import json
import re
import runpy
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NETWORKS = ("Ref", "Ref+GM", "NE+GM")
PCT = r"(-?\d+\.\d{2})%"
SPREAD = rf"{PCT} \+- (\d+\.\d{{2}})"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_seeds_quick_prints_mean_std_per_seed_and_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "seeds.json"
    main = runpy.run_path(str(REPO / "examples" / "seeds.py"))["main"]
    assert main(["--quick", "--seeds", "0", "1", "--workdir", str(tmp_path / "runs"), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out

    # per-seed rows: seed, network, clean, adv, fitness (fitness = min(clean, adv))
    per_seed: dict[str, dict[int, tuple[float, float, float]]] = {n: {} for n in NETWORKS}
    for m in re.finditer(rf"^seed (\d+) +(Ref\+GM|NE\+GM|Ref) +{PCT} +{PCT} +{PCT}", out, re.M):
        seed, name = int(m.group(1)), m.group(2)
        clean, adv, fit = (float(m.group(i)) for i in (3, 4, 5))
        assert fit == pytest.approx(min(clean, adv), abs=0.006)
        per_seed[name][seed] = (clean, adv, fit)
    for name in NETWORKS:
        assert sorted(per_seed[name]) == [0, 1], (name, out)

    # one mean +- std row per network; std = sample std of the per-seed values (printed to 0.01 points)
    for name in NETWORKS:
        rows = re.findall(rf"^{re.escape(name)} +{SPREAD} +{SPREAD} +{SPREAD}\s*$", out, re.M)
        assert len(rows) == 1, (name, out)
        cells = [float(v) for v in rows[0]]
        for k in range(3):
            values = [per_seed[name][s][k] for s in (0, 1)]
            mean, std = cells[2 * k], cells[2 * k + 1]
            assert std >= 0
            assert mean == pytest.approx(statistics.fmean(values), abs=0.011)
            assert std == pytest.approx(statistics.stdev(values), abs=0.011)

    # the paired difference and the verdict follow from the per-seed fitness
    diffs = [per_seed["NE+GM"][s][2] - per_seed["Ref+GM"][s][2] for s in (0, 1)]
    diff_row = re.search(rf"^mean \+- std +{SPREAD} +{SPREAD} +{SPREAD}\s*$", out, re.M)
    assert diff_row, out
    assert float(diff_row.group(5)) == pytest.approx(statistics.fmean(diffs), abs=0.011)
    assert float(diff_row.group(6)) == pytest.approx(statistics.stdev(diffs), abs=0.011)
    verdicts = re.findall(r"^verdict: (.*)$", out, re.M)
    assert len(verdicts) == 1
    assert verdicts[0].startswith((
        "NE+GM beats Ref+GM on fitness by more than one std",
        "Ref+GM beats NE+GM on fitness by more than one std",
        "no margin beyond one std",
    ))

    # the JSON holds the same numbers, unrounded
    data = json.loads(out_json.read_text())
    assert data["seeds"] == [0, 1] and data["quick"] is True
    for name in NETWORKS:
        for metric, k in (("clean", 0), ("adv", 1), ("fitness", 2)):
            values = [data["per_seed"][str(s)][name][metric] for s in (0, 1)]
            assert values == pytest.approx([per_seed[name][s][k] / 100 for s in (0, 1)], abs=6e-5)
            spread = data["summary"][name][metric]
            assert spread["values"] == values
            assert spread["std"] >= 0
            assert spread["mean"] == pytest.approx(statistics.fmean(values))
            assert spread["std"] == pytest.approx(statistics.stdev(values))
        for s in (0, 1):
            row = data["per_seed"][str(s)][name]
            assert row["fitness"] == min(row["clean"], row["adv"])
    fit = data["difference"]["NE+GM - Ref+GM"]["fitness"]
    rows = [data["per_seed"][str(s)] for s in (0, 1)]
    exact = [r["NE+GM"]["fitness"] - r["Ref+GM"]["fitness"] for r in rows]
    assert fit["values"] == pytest.approx(exact)
    assert fit["std"] == pytest.approx(statistics.stdev(exact))
    assert data["verdict"] == verdicts[0].split(" (")[0]
    expected = (
        "NE+GM beats Ref+GM on fitness by more than one std" if fit["mean"] > fit["std"]
        else "Ref+GM beats NE+GM on fitness by more than one std" if -fit["mean"] > fit["std"]
        else "no margin beyond one std"
    )
    assert data["verdict"] == expected

    # --reuse reads the finished runs back (no training) and prints the same tables
    again = tmp_path / "again.json"
    argv = ["--quick", "--seeds", "0", "1", "--workdir", str(tmp_path / "runs"), "--json", str(again), "--reuse"]
    assert main(argv) == 0
    out2 = capsys.readouterr().out
    assert out2.count("reusing the finished run") == 2 and "[4/5] evolving" not in out2
    reread = json.loads(again.read_text())
    assert reread["per_seed"] == data["per_seed"] and reread["verdict"] == data["verdict"]


def test_seeds_must_be_distinct(tmp_path: Path) -> None:
    main = runpy.run_path(str(REPO / "examples" / "seeds.py"))["main"]
    with pytest.raises(SystemExit):
        main(["--quick", "--seeds", "0", "0", "--workdir", str(tmp_path)])
