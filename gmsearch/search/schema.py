"""The trial schema: every ``gmsearch:`` storage key, and reading and writing what a trial stores.

All search state lives in Optuna storage, so any worker or a restarted
process rebuilds the search from the database alone. This module is the one
place that spells a ``gmsearch:`` key; everything else imports the constants.

Per trial:

- system attrs: :data:`GENOME_KEY` (the genome's JSON, written last by the
  sampler: a genome on a trial means its bookkeeping is complete),
  :data:`SURPLUS_KEY` (started after every planned trial was taken),
  :data:`TOLD_FAIL_KEY` (failed by its own worker, never re-queued), :data:`BEAT_KEY`
  (last heartbeat of a running trial through the gRPC proxy);
- user attrs: :data:`PARENT_KEY` (parent trial number, None for an initial
  candidate), :data:`GENERATION_KEY`, :data:`REPLACED_KEY` (the candidate the
  child replaced, None: rejected, as its worker saw the population when the
  child finished; with many workers a child finishing in the same instant
  can reorder it, and :func:`gmsearch.lineage` gives the replay's final
  answer), :data:`EPOCHS_KEY` (epochs the schedule
  gives it), :data:`ARCH_KEY` (readable summary), :data:`WEIGHTS_KEY`
  (artifact id of its trained weights), :data:`FAIL_REASON_KEY`, :data:`RIVAL_KEY`
  (the candidate a pruner compared it with), :data:`REEVALUATES_KEY` (the candidate a re-evaluation trial
  trains again: its fitness joins that candidate's mean), and the plain metrics
  ``clean_acc``, ``adv_acc``, ``epochs``, ``params``, ``train_seconds``.

Per study: system attr :data:`SAMPLER_KEY` (the sampler's settings); user
attrs :data:`DATA_KEY` (what rebuilds a network: input shape, classes),
:data:`ATTACK_KEY` (the resolved attack and its full parameters),
:data:`ARTIFACTS_KEY` (where trial weights live), :data:`BASELINE_KEY`,
:data:`ATTRIBUTIONS_KEY`, :data:`CONFIG_KEY` (the run configuration as a dict), :data:`TRANSFER_KEY`
(the transfer matrix of ``gmsearch evaluate``), and the prefixes :data:`REFINED_PREFIX` and
:data:`RESULTS_PREFIX` (one attr per refined trial / paper table).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from torch import nn

from gmsearch.nets.builder import build
from gmsearch.nets.genome import Genome
from gmsearch.search._optuna_private import journal_file_of, storage_of, trial_id_of, unwrap

logger = logging.getLogger(__name__)

# --- trial system attrs
GENOME_KEY = "gmsearch:genome"
SURPLUS_KEY = "gmsearch:surplus"
TOLD_FAIL_KEY = "gmsearch:told_fail"
BEAT_KEY = "gmsearch:beat"  # unix time of a running trial's last heartbeat through the gRPC proxy
# --- trial user attrs
PARENT_KEY = "gmsearch:parent"
GENERATION_KEY = "gmsearch:generation"
REPLACED_KEY = "gmsearch:replaced"
EPOCHS_KEY = "gmsearch:epochs"
ARCH_KEY = "gmsearch:architecture"
WEIGHTS_KEY = "gmsearch:weights"
FAIL_REASON_KEY = "gmsearch:fail_reason"
RIVAL_KEY = "gmsearch:rival"  # the candidate a child was compared with by the niche pruner
WOULD_PRUNE_KEY = "gmsearch:would_prune"  # first epoch the niche pruner stopped (shadow: would stop) it
PRUNE_SHADOW_KEY = "gmsearch:prune_shadow"  # whether that decision was only recorded (shadow mode)
INHERITED_KEY = "gmsearch:inherited"  # the child's blocks that started from its parent's weights
REEVALUATES_KEY = "gmsearch:reevaluates"  # the candidate this trial trains again (its genome, a new seed)
#: The fail reason of a child stopped by Ctrl-C (re-queued with its genome and parent).
INTERRUPTED = "interrupted"
CLEAN_ACC = "clean_acc"
ADV_ACC = "adv_acc"
# --- study system attrs
SAMPLER_KEY = "gmsearch:sampler"
# --- study user attrs
DATA_KEY = "gmsearch:data"
ATTACK_KEY = "gmsearch:attack"
ARTIFACTS_KEY = "gmsearch:artifacts"
BASELINE_KEY = "gmsearch:baseline_table"
ATTRIBUTIONS_KEY = "gmsearch:attributions"
REFINED_PREFIX = "gmsearch:refined:"
RESULTS_PREFIX = "gmsearch:results:"
CONFIG_KEY = "gmsearch:config"  # the run configuration the study was created with (gmsearch evaluate rebuilds from it)
TRANSFER_KEY = "gmsearch:transfer_matrix"  # the last `gmsearch evaluate` matrix
COMPARE_KEY = "gmsearch:compare"  # a `gmsearch compare` result, on the study <study>-compare
COMPARE_RUN_KEY = "gmsearch:compare_run"  # one way/seed of it (winner retrained on test), on that way's study

#: Folder name of the default artifact store, beside the study's database file.
ARTIFACTS_DIR = "gmsearch_artifacts"


def trial_seed(seed: int, number: int) -> int:
    """A 64-bit seed for trial ``number`` of a study seeded with ``seed`` (independent of the worker)."""
    digest = hashlib.sha256(f"gmsearch:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def is_child(trial: FrozenTrial) -> bool:
    """Whether ``trial`` is a child (it has a parent), not an initial candidate."""
    return trial.user_attrs.get(PARENT_KEY) is not None


def genome_of(trial: optuna.Trial | FrozenTrial) -> Genome:
    """The genome stored on a (running or finished) trial by :class:`~gmsearch.NicheEvolutionSampler`.

    Raises:
        optuna.TrialPruned: ``trial`` is a running surplus trial (the study
            already has all its generations); the objective stops at once.
        ValueError: the trial has no genome.
    """
    if isinstance(trial, optuna.Trial):
        sampled = getattr(trial.study.sampler, "running_genome", None)  # NicheEvolutionSampler of this process
        genome = sampled(trial.study, trial_id_of(trial)) if sampled is not None else None
        if genome is not None:
            return cast(Genome, genome)
    frozen = trial.storage.get_trial(trial_id_of(trial)) if isinstance(trial, optuna.Trial) else trial
    text = frozen.system_attrs.get(GENOME_KEY)
    if text is None:
        if isinstance(trial, optuna.Trial) and frozen.system_attrs.get(SURPLUS_KEY):
            raise optuna.TrialPruned(
                f"trial {frozen.number} is surplus: every trial of the study's generations is already taken"
            )
        raise ValueError(
            f"trial {frozen.number} has no genome (system attr {GENOME_KEY!r}); "
            "run the study with gmsearch.NicheEvolutionSampler"
        )
    return _parse_genome(text)


@functools.lru_cache(maxsize=16384)
def _parse_genome(text: str) -> Genome:
    """Genomes are immutable: each stored text is parsed once per process (replays read them often)."""
    return Genome.from_json(text)


# --------------------------------------------------------------------------- what the study records


def record_data(study: optuna.Study, data: Any) -> None:
    """Record what rebuilds a network of ``data`` (name, input shape, classes) on ``study``, once."""
    if DATA_KEY not in study.user_attrs:
        study.set_user_attr(
            DATA_KEY,
            {"name": data.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes},
        )


def record_attack(study: optuna.Study, name: str, params: dict[str, Any]) -> None:
    """Record the resolved attack (name and every parameter) on ``study``; warn if it was run with another."""
    mine = {"name": name, "params": {k: (float(v) if isinstance(v, float) else v) for k, v in params.items()}}
    stored = study.user_attrs.get(ATTACK_KEY)
    if stored is None:
        study.set_user_attr(ATTACK_KEY, mine)
    elif stored != mine:
        logger.warning("study %r was run with attack %s; this process uses %s", study.study_name, stored, mine)


def record_config(study: optuna.Study, values: dict[str, Any]) -> None:
    """Record the run configuration (``dataclasses.asdict`` of a RunConfig) on ``study``, once."""
    if CONFIG_KEY not in study.user_attrs:
        study.set_user_attr(CONFIG_KEY, values)


# --------------------------------------------------------------------------- where artifacts live


def default_artifact_dir(storage_url: str | None) -> Path:
    """The default artifact folder of a study: beside its SQLite or journal file, else ``./gmsearch_artifacts``."""
    if storage_url:
        for prefix in ("sqlite:///", "journal:"):
            if storage_url.startswith(prefix) and storage_url != "sqlite:///:memory:":
                return Path(storage_url[len(prefix) :]).resolve().parent / ARTIFACTS_DIR
    return Path.cwd() / ARTIFACTS_DIR


def storage_url(study: optuna.Study) -> str | None:
    """The database URL of ``study``'s storage (None for in-memory and other storages)."""
    storage = unwrap(storage_of(study))  # Optuna wraps an RDB storage in its cache
    if isinstance(storage, RDBStorage):
        return storage.url
    path = journal_file_of(storage)
    return f"journal:{path}" if path else None


def recorded_artifact_dir(study: optuna.Study) -> Path | None:
    """The artifact folder recorded on ``study`` (None: not recorded)."""
    value = study.user_attrs.get(ARTIFACTS_KEY)
    return Path(value) if isinstance(value, str) else None


def record_artifact_dir(study: optuna.Study, folder: str | Path) -> None:
    """Record where ``study``'s artifacts live (once; ``gmsearch export`` and reports read it)."""
    resolved = str(Path(folder).resolve())
    if study.user_attrs.get(ARTIFACTS_KEY) != resolved:
        study.set_user_attr(ARTIFACTS_KEY, resolved)


def artifact_dirs(study: optuna.Study, given: str | Path | None = None) -> list[Path]:
    """Where to look for ``study``'s artifacts: ``given`` alone, else the recorded one, beside the database."""
    if given is not None:
        return [Path(given)]
    dirs = []
    recorded = recorded_artifact_dir(study)
    if recorded is not None:
        dirs.append(recorded)
    dirs.append(default_artifact_dir(storage_url(study)))
    dirs.append(Path.cwd() / ARTIFACTS_DIR)
    return list(dict.fromkeys(dirs))


def open_artifact_store(folder: str | Path) -> FileSystemArtifactStore:
    """A file-system artifact store in ``folder`` (created)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


# --------------------------------------------------------------------------- trained weights


#: The MIME type of a weights artifact (a torch checkpoint: the system's MIME table may map .pt to something else).
WEIGHTS_MIME_TYPE = "application/octet-stream"


def save_weights(
    store: FileSystemArtifactStore,
    owner: optuna.Trial | optuna.Study,
    net: nn.Module,
    genome: Genome,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    filename: str = "weights.pt",
) -> str:
    """Write a network's weights with what rebuilds it to ``store`` as an artifact of ``owner``.

    Optuna's ``upload_artifact`` writes the file first, then its record on
    ``owner`` (so a stored record always has its file).

    Returns:
        The artifact id.

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: ``owner`` is a trial that has finished (the file is written).
    """
    payload = {
        "genome": genome.to_json(),
        "state_dict": net.state_dict(),
        "input_shape": [int(v) for v in input_shape],
        "num_classes": int(num_classes),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        torch.save(payload, path)
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=owner,
                               mimetype=WEIGHTS_MIME_TYPE)


def load_weights(artifact_id: str, stores: Sequence[FileSystemArtifactStore | str | Path]) -> dict[str, Any]:
    """The payload of a weights artifact (``genome``, ``state_dict``, ``input_shape``, ``num_classes``).

    ``stores`` are tried in order; a folder that does not hold the artifact is skipped.
    """
    tried = []
    for store in stores:
        if isinstance(store, str | Path):
            if not (Path(store) / artifact_id).is_file():
                tried.append(str(store))
                continue
            store = FileSystemArtifactStore(str(store))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "weights.pt"
            download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(path))
            payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return payload
    raise ValueError(
        f"weights artifact {artifact_id} not found in {', '.join(tried) or 'no store'}; "
        "pass the study's artifact folder (--artifacts DIR)"
    )


def build_from_weights(
    payload: dict[str, Any],
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild the network of a weights payload and load its weights (eval mode)."""
    shape = input_shape or payload.get("input_shape")
    classes = num_classes or payload.get("num_classes")
    if shape is None or classes is None:
        raise ValueError("the weights record neither input shape nor number of classes; pass them")
    channels, h, w = (int(v) for v in shape)
    net = build(Genome.from_json(payload["genome"]), in_channels=channels, num_classes=int(classes),
                image_size=(h, w))
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval()


def trial_weights_id(trial: FrozenTrial, *, refined_from: optuna.Study | None = None) -> str:
    """The weights artifact id of ``trial`` (its refined weights when ``refined_from`` is its study)."""
    if refined_from is not None:
        record = refined_from.user_attrs.get(f"{REFINED_PREFIX}{trial.number}") or {}
        if record.get("weights") is None:
            raise ValueError(f"trial {trial.number} has not been refined (see gmsearch.refine)")
        return str(record["weights"])
    artifact_id = trial.user_attrs.get(WEIGHTS_KEY)
    if artifact_id is None:
        raise ValueError(
            f"trial {trial.number} ({trial.state.name}) has no saved weights (user attr {WEIGHTS_KEY!r}); "
            "only trials that finished with an artifact store have them"
        )
    return str(artifact_id)
