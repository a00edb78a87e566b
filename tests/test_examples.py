"""The plugin examples run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / script)], capture_output=True, text=True, check=True,
        cwd=REPO, env=env, timeout=300,
    ).stdout


def test_custom_mutation_example_is_used_by_the_sampler() -> None:
    out = _run("custom_mutation.py")
    assert "registered: True" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("sampler:"))
    assert int(line.split()[1]) > 0, line


def test_custom_attack_example_drives_a_study() -> None:
    out = _run("custom_attack.py")
    assert "fgm_l2(eps=1" in out
    assert out.count("trial ") == 2 and "fitness" in out
