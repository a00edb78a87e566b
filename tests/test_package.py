"""The package reads as the pipeline: a light import, one owner of every storage key, two-objective fitness typed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import gmsearch as gms

PACKAGE = Path(gms.__file__).resolve().parent


def test_import_gmsearch_loads_no_heavy_module() -> None:
    code = (
        "import sys, gmsearch; heavy = ('torch', 'plotly', 'captum', 'gmsearch.report', 'gmsearch.paper'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_every_storage_key_is_spelled_in_the_schema_module_only() -> None:
    spelled = sorted(
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if re.search(r"[\"']gmsearch:", path.read_text())
    )
    assert spelled == ["search/schema.py"]


def test_public_names_resolve() -> None:
    for name in gms.__all__:
        assert getattr(gms, name) is not None, name
    assert gms.fitness.n_objectives(gms.fitness.get("pareto")) == 2
