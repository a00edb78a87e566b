"""One seed, one table: the same tiny quickstart, run twice in fresh processes (fresh cache, storage and
artifacts each) at the same torch thread count, stores the same values and prints the same table.

Each run happens in its own Python process (``python tests/test_determinism.py WORKDIR OUT``), so no
process-level state (a seeded global RNG, a warm cache, a parsed genome) can hide a difference. The run
dumps every stored value: the baseline rows and table, the study's attrs, every trial's state, params,
values, intermediate values, user and system attrs and genome, the trained weights behind each trial's
artifact, and every cached tensor (reference weights, adversarial sets, reference gradients). Only what
is meant to differ is left out: times (``train_seconds``, trial datetimes), Optuna's random artifact ids
(the weights behind them are compared instead) and the work folder's path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TINY = {"image_size": 8, "generations": 1, "population_size": 2, "n_children": 1, "epochs": 2,
        "reference_epochs": 2, "attack_steps": 2, "max_params": 20_000}
TIMES = ("train_seconds",)


def _plain(value: Any, work: str) -> Any:
    """JSON-safe, with the work folder's path replaced (the two runs live in different folders)."""
    text = json.dumps(value, sort_keys=True, default=repr).replace(work, "<work>")
    return json.loads(text)


def dump(workdir: Path, threads: int) -> dict[str, Any]:
    """Run the tiny quickstart in ``workdir`` with ``threads`` torch threads; every value it stored."""
    import torch

    torch.set_num_threads(threads)
    from gmsearch.cache import load_tensors, state_digest
    from gmsearch.quickstart import run_quickstart
    from gmsearch.search import schema
    from gmsearch.search._optuna_private import storage_of, study_id_of

    res = run_quickstart(workdir=workdir, show_progress_bar=False, seed=0, **TINY)  # type: ignore[arg-type]
    work = str(workdir.resolve())
    study = res.study
    out: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "table": res.table,
        "rows": [dataclasses.asdict(r) for r in res.rows],
        "study_user_attrs": _plain(study.user_attrs, work),
        "study_system_attrs": _plain(storage_of(study).get_study_system_attrs(study_id_of(study)), work),
        "trials": [],
        "weights": {},
        "cache": {},
    }
    for t in study.get_trials(deepcopy=False):
        user = {k: v for k, v in t.user_attrs.items() if k not in TIMES and k != schema.WEIGHTS_KEY}
        system = {k: v for k, v in t.system_attrs.items() if not k.startswith("artifacts:")}
        out["trials"].append(_plain({
            "number": t.number, "state": t.state.name, "params": t.params,
            "distributions": {k: repr(d) for k, d in t.distributions.items()}, "values": t.values,
            "intermediate_values": t.intermediate_values, "user_attrs": user, "system_attrs": system,
            "genome": t.system_attrs.get(schema.GENOME_KEY),
            "artifacts": sorted(json.loads(v)["filename"] for k, v in t.system_attrs.items()
                                if k.startswith("artifacts:")),
        }, work))
        if schema.WEIGHTS_KEY in t.user_attrs:
            payload = schema.load_weights(schema.trial_weights_id(t), [workdir / "gmsearch_artifacts"])
            out["weights"][str(t.number)] = {
                "state": state_digest(payload["state_dict"]), "genome": payload["genome"],
                "input_shape": payload["input_shape"], "num_classes": payload["num_classes"],
            }
    cache = workdir / ".gmsearch_cache"
    for f in sorted(cache.rglob("*.pt")):
        out["cache"][str(f.relative_to(cache))] = state_digest(load_tensors(f))
    return out


def _run(workdir: Path, out: Path, threads: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONHASHSEED": "random"}
    return subprocess.Popen([sys.executable, str(HERE), str(workdir), str(out), str(threads)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{where}/{k}: only in {'first' if k in a else 'second'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            found += _differences(a[k], b[k], f"{where}/{k}")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"[:300]]


def test_same_command_same_threads_stores_the_same_values(tmp_path: Path) -> None:
    """Two fresh processes, one thread each, run side by side: every stored value and the table agree."""
    procs = [(_run(tmp_path / f"run{i}", tmp_path / f"run{i}.json", 1), tmp_path / f"run{i}.json") for i in (1, 2)]
    dumps = []
    for proc, out in procs:
        log, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, log.decode(errors="replace")[-3000:]
        dumps.append(json.loads(out.read_text()))
    first, second = dumps
    assert first["threads"] == second["threads"] == 1
    assert len(first["trials"]) == 4 and len(first["weights"]) == 4 and len(first["cache"]) >= 4  # not vacuous
    assert all(t["values"] and t["genome"] and t["intermediate_values"] for t in first["trials"])
    assert [r["name"] for r in first["rows"]] == ["Ref", "Ref+GM", "NE+GM"]
    assert _differences(first, second) == []
    assert first["table"] == second["table"]


def test_cudnn_autotuner_stays_off_when_deterministic_algorithms_are_asked_for() -> None:
    """cuDNN's autotuner picks kernels by timing (results can change run to run): train leaves it off under
    ``torch.use_deterministic_algorithms(True)`` and turns it on otherwise (a flag: no GPU needed)."""
    import torch

    from gmsearch.training.loop import _use_fast_cuda

    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
        _use_fast_cuda(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is False
        torch.use_deterministic_algorithms(False)
        _use_fast_cuda(torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False
        _use_fast_cuda(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = benchmark
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def test_numerics_names_torch_device_and_threads() -> None:
    import torch

    from gmsearch.training.loop import numerics

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert numerics("cpu") == f"torch {torch.__version__}, cpu, 1 thread"
    finally:
        torch.set_num_threads(threads)


def test_a_reference_cached_at_another_thread_count_says_so(tmp_path: Path, tiny_data: Any) -> None:
    """The cache key holds the reference's inputs, not the thread count (workers share it): a run that loads a
    reference trained with other numerics says so, with both, instead of silently printing the cached run's
    numbers."""
    import torch

    from gmsearch.nets import references

    data = tiny_data(32)
    lines: list[str] = []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        references.get("hand_a", data, epochs=1, device="cpu", cache_dir=tmp_path, progress=lines.append)
        assert any(line.startswith("training reference hand_a") for line in lines)
        lines.clear()
        references.get("hand_a", data, epochs=1, device="cpu", cache_dir=tmp_path, progress=lines.append)
        assert lines == []  # same numerics: loaded without a word
        torch.set_num_threads(2)
        references.get("hand_a", data, epochs=1, device="cpu", cache_dir=tmp_path, progress=lines.append)
    finally:
        torch.set_num_threads(threads)
    assert len(lines) == 1 and "was trained with" in lines[0], lines  # loaded, not retrained
    assert f"torch {torch.__version__}, cpu, 1 thread;" in lines[0] and "cpu, 2 threads" in lines[0]


if __name__ == "__main__":
    workdir, out_json, n_threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    result = dump(workdir, n_threads)
    out_json.write_text(json.dumps(result, sort_keys=True, indent=1))
