"""Bad inputs a new user makes, and how fast ``gmsearch`` rejects each (before any training).

``CASES`` is the table ``tests/test_cli_errors.py`` checks (exit status, one
line on stderr naming the problem, no traceback, nothing written). Run as a
script it times each case as a real process with an uncached reference:

    python benchmarks/cli_errors.py          # seconds to the error, per bad input (goal: < 10 s)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GOOD = """
seed = 0
device = "cpu"
[data]
name = "digits"
image_size = 8
[reference]
epochs = 2
[search]
population_size = 2
n_children = 1
generations = 1
epochs = 1
[study]
name = "bad"
storage = "sqlite:///{tmp}/study.db"
artifacts = "{tmp}/artifacts"
cache_dir = "{tmp}/cache"
"""


@dataclass(frozen=True)
class Case:
    """One bad input: ``args(tmp)`` writes what it needs into ``tmp`` and returns the command's arguments."""

    name: str
    args: Callable[[Path], list[str]]
    code: int
    says: str


def _config(tmp: Path, extra: str = "", **replace: str) -> Path:
    text = GOOD
    for old, new in replace.items():
        text = text.replace(old, new)
    text = text.format(tmp=tmp)
    path = tmp / "study.toml"
    path.write_text(text + extra)
    return path


def _run(extra: str = "", *more: str, **replace: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", str(_config(tmp, extra, **replace)), *more]


def _storage(url: str) -> Callable[[Path], str]:
    return lambda tmp: url.format(tmp=tmp)


def _with_file(write: Callable[[Path], None], args: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        write(tmp)
        return args(tmp)

    return make


def _random_bytes(tmp: Path) -> None:
    (tmp / "corrupt.db").write_bytes(np.random.default_rng(0).bytes(8192))


def _truncated_sqlite(tmp: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp / "full.db") as db:
        db.execute("CREATE TABLE t (x TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 200,)] * 2000)
    data = (tmp / "full.db").read_bytes()
    (tmp / "truncated.db").write_bytes(data[: len(data) // 3])
    (tmp / "full.db").unlink()


def _npz(tmp: Path, *, nan: bool = False, label: int | None = None) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((60, 8, 8), dtype=np.float32)
    y = np.arange(60) % 10
    if nan:
        x[3, 2, 2] = np.nan
    if label is not None:
        y[5] = label
    np.savez(tmp / "data.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])


def _npz_run(**kw: object) -> Callable[[Path], list[str]]:
    return _with_file(lambda tmp: _npz(tmp, **kw),  # type: ignore[arg-type]
                      lambda tmp: _run(**{'name = "digits"': 'name = "{tmp}/data.npz"', "image_size = 8": ""})(tmp))


def _file(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text("not a folder")


#: Plugins a user writes (``plugins = ["{tmp}/plug"]``): a fitness that returns NaN, an attack whose constructor raises.
PLUGIN = """
import gmsearch as gms

@gms.fitness.register("cli_nan_fitness")
def cli_nan_fitness(clean_acc, adv_acc):
    return float("nan")

@gms.attacks.register("cli_broken_attack")
class CliBrokenAttack(gms.attacks.Attack):
    def __post_init__(self):
        raise RuntimeError("no such kernel")
"""


def _plugin_run(extra: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "plug").mkdir()
        (tmp / "plug" / "__init__.py").write_text(PLUGIN)
        return _run(extra, **{'device = "cpu"': 'device = "cpu"\nplugins = ["{tmp}/plug"]'})(tmp)

    return make


def _in_subfolder(**replace: str) -> Callable[[Path], list[str]]:
    """The config in ``tmp/conf`` (run from ``tmp``), with relative paths in it."""

    def make(tmp: Path) -> list[str]:
        (tmp / "conf").mkdir()
        path = _config(tmp, **replace)
        return ["run", str(path.rename(tmp / "conf" / "study.toml"))]

    return make


def _existing_study(tmp: Path) -> None:
    """A study ``bad`` created with population_size 2 and n_children 1 (one trial started, nothing trained)."""
    import optuna

    import gmsearch as gms

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = gms.NicheEvolutionSampler(population_size=2, n_children=1, seed=0)
    study = gms.create_study(study_name="bad", storage=f"sqlite:///{tmp}/study.db", sampler=sampler,
                             heartbeat_interval=None)
    study.ask()


CASES: list[Case] = [
    Case("storage: SQLite in a folder that does not exist", _run(**{"{tmp}/study.db": "{tmp}/no/such/dir/s.db"}),
         2, "does not exist"),
    Case("storage: corrupt SQLite file (random bytes)",
         _with_file(_random_bytes, _run(**{"{tmp}/study.db": "{tmp}/corrupt.db"})), 1, "not a SQLite database"),
    Case("storage: truncated SQLite file",
         _with_file(_truncated_sqlite, _run(**{"{tmp}/study.db": "{tmp}/truncated.db"})), 1, "corrupt"),
    Case("storage: unreachable PostgreSQL",
         _run(**{"sqlite:///{tmp}/study.db": "postgresql://u:secret@127.0.0.1:1/db"}), 1, "cannot connect"),
    Case("storage: unsupported URL scheme", _run(**{"sqlite:///{tmp}/study.db": "redis://localhost/0"}),
         2, "unsupported URL scheme 'redis'"),
    Case("report: corrupt SQLite file",
         _with_file(_random_bytes, lambda tmp: ["report", "--storage", f"sqlite:///{tmp}/corrupt.db",
                                                "--out", str(tmp / "r.html")]), 1, "not a SQLite database"),
    Case("report: unreachable PostgreSQL",
         lambda tmp: ["report", "--storage", "postgresql://u:secret@127.0.0.1:1/db", "--out", str(tmp / "r.html")],
         1, "cannot connect"),
    Case("report: unsupported URL scheme",
         lambda tmp: ["report", "--storage", "redis://x", "--out", str(tmp / "r.html")], 2, "unsupported URL scheme"),
    Case("unknown GM loss variant", _run('\n[training]\nloss = "cosinus"\n'), 2, "cosine"),
    Case("min_distance that cannot be met", _run(**{"generations = 1": "generations = 1\nmin_distance = 1000.0"}),
         2, "min_distance"),
    Case("[search] epochs = 0", _run(**{"epochs = 1\n[study]": "epochs = 0\n[study]"}), 2, "epochs must be >= 1"),
    Case("[search] generations = -2", _run(**{"generations = 1": "generations = -2"}), 2, "generations must be >= 1"),
    Case("[search] unknown sampler", _run(**{"generations = 1": 'generations = 1\nsampler = "nich"'}), 2,
         "available: niche, random, regularized, restarts"),
    Case("[search] regularized with sample_size = 0",
         _run(**{"generations = 1": 'generations = 1\nsampler = "regularized"\nsampler_params = {{sample_size = 0}}'}),
         2, "sample_size must be >= 1"),
    Case("[search] restarts of a reference that is not a zoo genome",
         _run(**{"generations = 1": 'generations = 1\nsampler = "restarts"',
                 "epochs = 2": 'name = "resnet18"\nepochs = 2'}),
         2, "sampler_params.genome"),
    Case("[search] sampler_params with a [search] setting",
         _run(**{"generations = 1": 'generations = 1\nsampler_params = {{population_size = 8}}'}),
         2, "sampler_params: population_size is set by [search] population_size; set it there"),
    Case("run --workers 0", _run("", "--workers", "0"), 2, "must be >= 1"),
    Case("workers and workers_per_device both in the config",
         _run(**{'device = "cpu"': 'device = "cpu"\nworkers = 2\nworkers_per_device = 2'}),
         2, "workers = 2 and workers_per_device = 2"),
    Case("run --workers with --workers-per-device", _run("", "--workers", "2", "--workers-per-device", "2"),
         2, "--workers 2 and --workers-per-device 2"),
    Case("run --device cuda without a GPU", _run("", "--device", "cuda"), 1, "no CUDA GPU"),
    Case("[study] artifacts is a file", _with_file(_file("artifacts"), _run()), 2, "is a file"),
    Case("[study] artifacts inside a file", _with_file(_file("afile"), _run(**{"{tmp}/artifacts": "{tmp}/afile/art"})),
         2, "[study] artifacts"),
    Case("[study] cache_dir inside a file", _with_file(_file("afile"), _run(**{"{tmp}/cache": "{tmp}/afile/cache"})),
         2, "[study] cache_dir"),
    Case("[study] name is empty", _run(**{'name = "bad"': 'name = ""'}), 2, "[study] name must be a non-empty name"),
    Case("relative plugin path: resolved from the config file's folder",
         _in_subfolder(**{'device = "cpu"': 'device = "cpu"\nplugins = ["./no_such_plugin"]'}), 2,
         "/conf/no_such_plugin' not found"),
    Case("existing study with another population_size",
         _with_file(_existing_study, _run(**{"population_size = 2": "population_size = 3"})),
         2, "was created with population_size = 2, n_children = 1; this config has population_size = 3"),
    Case("reference checkpoint that does not exist",
         _run(**{"[reference]": '[reference]\nname = "missing/ref.pt"\narch = "hand_a"'}), 2, "no such checkpoint"),
    Case("plugin name that is not found", _run(**{'device = "cpu"': 'device = "cpu"\nplugins = ["no_such_plugin"]'}),
         2, "not found"),
    Case("fitness plugin that returns NaN", _plugin_run('\n[fitness]\nname = "cli_nan_fitness"\n'),
         2, "[fitness] fitness 'cli_nan_fitness' returned nan; a fitness must return a finite number"),
    Case("[fitness] weighted with weight = 2", _run('\n[fitness]\nname = "weighted"\nparams = { weight = 2 }\n'),
         2, "fitness 'weighted': weighted fitness: weight must be in [0, 1], got 2"),
    Case("[fitness] params the plugin does not take", _run('\n[fitness]\nname = "mean"\nparams = { weight = 2 }\n'),
         2, "unexpected keyword argument 'weight'"),
    Case("attack plugin whose constructor raises",
         _plugin_run('\n[attack]\nname = "cli_broken_attack"\nparams = { eps = 0.1 }\n'),
         2, "[attack] attack 'cli_broken_attack': RuntimeError: no such kernel"),
    Case("[attack] L-inf eps = 5 on images in [0, 1]", _run('\n[attack]\nparams = { eps = 5 }\n'),
         2, "[attack] attack 'pgd_linf': eps 5 is an L-inf budget on images in [0, 1]: it must be < 1"),
    Case("[attack] L2 eps beyond the images' diameter",
         _run('\n[attack]\nname = "pgd_l2"\nparams = { eps = 9.0 }\n'), 2, "are at most sqrt(64) = 8 apart"),
    Case("data: NaN pixels", _npz_run(nan=True), 2, "NaN"),
    Case("data: label outside the declared classes", _npz_run(label=12), 2, "labels run to 12"),
    Case("quickstart --epochs 0", lambda tmp: ["quickstart", "--workdir", str(tmp), "--epochs", "0"], 2, ">= 1"),
    Case("quickstart --generations -2", lambda tmp: ["quickstart", "--workdir", str(tmp), "--generations", "-2"],
         2, ">= 1"),
    Case("quickstart --workdir is a file",
         _with_file(_file("wd"), lambda tmp: ["quickstart", "--workdir", str(tmp / "wd")]), 2, "is a file"),
    Case("quickstart --device cuda without a GPU",
         lambda tmp: ["quickstart", "--workdir", str(tmp / "q"), "--device", "cuda"], 1, "no CUDA GPU"),
    Case("compare: unknown way", lambda tmp: ["compare", str(_config(tmp)), "--ways", "niche,bayes"], 2,
         "unknown ['bayes']; choose from niche, random"),
    Case("compare: --seeds not a range", lambda tmp: ["compare", str(_config(tmp)), "--seeds", "0-x"], 2,
         "give a range (0-4)"),
    Case("compare: --base not one of the ways",
         lambda tmp: ["compare", str(_config(tmp)), "--ways", "niche,random", "--base", "regularized"], 2,
         "--base regularized: not one of the ways; choose from niche, random"),
    Case("compare: restarts of a reference that is not a zoo genome",
         lambda tmp: ["compare", str(_config(tmp, **{"epochs = 2": 'name = "resnet18"\nepochs = 2'})),
                      "--ways", "niche,restarts"], 2, "sampler_params.genome"),
    Case("compare: a way spec setting the shared data split",
         lambda tmp: ["compare", str(_config(tmp)), "--ways", "niche,niche[data.val_fraction=0.3]"], 2,
         "[data] is the same for every way"),
    Case("compare: a sampler param that [search] sets",
         lambda tmp: ["compare", str(_config(tmp)), "--ways", "niche,niche[population_size=8]"], 2,
         "in a compare way spec: search.population_size=..."),
    Case("evaluate: unknown source", lambda tmp: ["evaluate", "--storage", f"sqlite:///{tmp}/study.db",
                                                  "--sources", "reference", "alexnet"], 2, "unknown source 'alexnet'"),
    Case("evaluate: unknown attack", lambda tmp: ["evaluate", "--storage", f"sqlite:///{tmp}/study.db",
                                                  "--attacks", "fgsm", "cw"], 2, "unknown attack 'cw'"),
]


def main() -> int:
    print(f"{'bad input':<50} {'exit':>4} {'seconds':>8}  first line of stderr")
    worst = 0.0
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            args = case.args(tmp)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "gmsearch.cli", *args], capture_output=True, text=True,
                                  cwd=tmp, env={**os.environ, "GMSEARCH_CACHE": str(tmp / "cache"),
                                                "PYTHONDONTWRITEBYTECODE": "1"}, timeout=600)
            seconds = time.perf_counter() - start
        worst = max(worst, seconds)
        line = (done.stderr.strip().splitlines() or ["(nothing)"])[0]
        ok = "" if done.returncode == case.code and case.says in done.stderr else "  UNEXPECTED"
        print(f"{case.name:<50} {done.returncode:>4} {seconds:8.2f}  {line[:90]}{ok}")
    print(f"slowest: {worst:.2f} s (goal: under 10 s, before any training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
