"""Run a configured study with one or many worker processes.

The parent process prepares what every worker shares (dataset, trained
reference, adversarial sets, reference gradients — all cached on disk), then
spawns ``workers`` processes (or ``workers_per_device`` on each device)
that optimise the same study in the same storage. Each worker takes one GPU
round-robin when GPUs exist, CPU otherwise
(:func:`gmsearch.pipeline.device_for`). The sampler stops every worker once all trials of the
``generations`` generations have finished; failed trials are replaced, and
the trials of dead workers are failed by the heartbeat and re-queued for the
others.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from gmsearch import interrupt, pipeline
from gmsearch.config import RunConfig
from gmsearch.errors import Interrupted, UsageError
from gmsearch.search._optuna_private import OPTIMIZE_LOGGER, is_heartbeat_enabled, storage_of
from gmsearch.search.objective import GMObjective
from gmsearch.search.samplers import GenomeSampler
from gmsearch.search.schema import FAIL_REASON_KEY, GENOME_KEY, INTERRUPTED
from gmsearch.search.study import RequeueTrial

logger = logging.getLogger(__name__)


def build(cfg: RunConfig, *, worker: int = 0) -> tuple[optuna.Study, GMObjective, int]:
    """Study, objective and the total number of trials for ``cfg`` (see :func:`gmsearch.pipeline.assemble`)."""
    built = pipeline.assemble(cfg, worker=worker)
    return built.study, built.objective, built.n_trials


class _Progress:
    """Callback: stop a worker whose last ``limit`` trials all failed, or that has finished no trial and whose
    last ``same_reason`` trials failed for one reason (a bad plugin: the next would too); note whether a round
    did any work."""

    def __init__(self, limit: int = 25, same_reason: int = 3) -> None:
        self.limit, self.same_reason = limit, same_reason
        self.failures = 0
        self.reasons: list[str] = []  # of the failures in a row
        self.completed = False  # this worker has finished a trial
        self.tripped = False
        self.worked = False  # a trial other than a surplus one ran in this round

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.worked = self.worked or GENOME_KEY in trial.system_attrs
        self.completed = self.completed or trial.state == TrialState.COMPLETE
        failed = trial.state == TrialState.FAIL
        self.failures = self.failures + 1 if failed else 0
        reason = trial.user_attrs.get(FAIL_REASON_KEY) if failed else None
        self.reasons = [*self.reasons, str(reason)] if reason not in (None, INTERRUPTED) else []
        if self.failures >= self.limit:
            logger.error(
                "the last %d trials of this worker failed (see the user attr %s); stopping it",
                self.failures, FAIL_REASON_KEY,
            )
        elif not self.completed and len(self.reasons) >= self.same_reason and len(set(self.reasons)) == 1:
            logger.error("this worker has finished no trial and its last %d failed for one reason (%s); stopping it",
                         len(self.reasons), reason)
        else:
            return
        self.tripped = True
        study.stop()


class _DropFailureLines(logging.Filter):
    """Optuna's line for a failed trial: gmsearch already logged the reason (one warning per trial)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Trial ") and (" failed with value " in message or "Interrupted(" in message
                                                        or "KeyboardInterrupt" in message))


@contextmanager
def _quiet_optuna_failures() -> Iterator[None]:
    optuna_logger = logging.getLogger(OPTIMIZE_LOGGER)
    drop = _DropFailureLines()
    optuna_logger.addFilter(drop)
    try:
        yield
    finally:
        optuna_logger.removeFilter(drop)


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Re-queue every trial stopped by Ctrl-C (not yet retried) with its genome and parent; their numbers.

    The interrupted trial stays in the study as FAIL (reason ``interrupted``);
    its WAITING copy starts without that outcome (:class:`~gmsearch.search.study.RequeueTrial`).
    """
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    again = [
        t for t in trials
        if t.state == TrialState.FAIL and t.user_attrs.get(FAIL_REASON_KEY) == INTERRUPTED
        and GENOME_KEY in t.system_attrs and t.number not in retried
    ]
    requeue = RequeueTrial(max_retry=None)  # copies genome, parent and params
    for trial in again:
        requeue(study, trial)
    return [t.number for t in again]


def trial_summary(study: optuna.Study) -> str:
    """What became of a study's trials, in one line: ``8 trials: 6 complete, 1 interrupted (1 retried), 1 surplus``.

    A trial stopped by Ctrl-C (or failed by the heartbeat) stays in the study
    as FAIL beside its retry, a later trial with the same genome; so the
    total counts both, and ``(retried)`` says how many already have their retry.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    counts: Counter[str] = Counter()
    again: Counter[str] = Counter()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            kind = "complete"
        elif t.state == TrialState.PRUNED:
            kind = "pruned" if GENOME_KEY in t.system_attrs else "surplus"
        elif t.state == TrialState.FAIL:
            kind = "interrupted" if t.user_attrs.get(FAIL_REASON_KEY) == INTERRUPTED else "failed"
            again[kind] += t.number in retried
        else:
            kind = "waiting" if t.state == TrialState.WAITING else "running"
        counts[kind] += 1
    parts = []
    for kind in ("complete", "pruned", "interrupted", "failed", "waiting", "running", "surplus"):
        if counts[kind]:
            parts.append(f"{counts[kind]} {kind}" + (f" ({again[kind]} retried)" if again[kind] else ""))
    return f"{len(trials)} trials" + (": " + ", ".join(parts) if parts else "")


def failure_summary(study: optuna.Study) -> str | None:
    """When no trial with a genome completed but some failed: the most common reason, else None."""
    trials = [t for t in study.get_trials(deepcopy=False) if GENOME_KEY in t.system_attrs]
    if not trials or any(t.state == TrialState.COMPLETE for t in trials):
        return None
    reasons = Counter(str(t.user_attrs.get(FAIL_REASON_KEY, "unknown")) for t in trials if t.state == TrialState.FAIL)
    if not reasons:
        return None
    reason, count = reasons.most_common(1)[0]
    return f"every trial failed ({sum(reasons.values())}); the most common reason ({count}x): {reason}"


def _remaining(study: optuna.Study, total: int) -> int:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return total - len([t for t in done if GENOME_KEY in t.system_attrs])


def optimize_until_finished(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    *,
    show_progress_bar: bool = False,
    max_consecutive_failures: int = 25,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> bool:
    """One worker: optimise ``study`` until every trial of its sampler's generations has finished.

    Any number of these (processes, machines) can work on one study. Failed
    trials are replaced; a trial that another worker failed as stale while
    this one was still running it (heartbeat silent longer than the grace
    period, e.g. under heavy load) has been re-queued, so the worker just goes
    on. It stops early when its last ``max_consecutive_failures`` trials all
    failed, or, on storages without a heartbeat (journal), when only trials
    held by other (possibly dead) workers are left.

    Args:
        study: A study whose sampler is a sampler plugin (:mod:`gmsearch.search.samplers`, e.g.
            :class:`~gmsearch.NicheEvolutionSampler`) with ``generations`` set.
        objective: The objective, e.g. a :class:`~gmsearch.GMObjective`.
        show_progress_bar: Optuna's progress bar.
        max_consecutive_failures: Stop after this many failed trials in a row.
        callbacks: More of Optuna's ``study.optimize`` callbacks (e.g. a progress line per trial).

    Returns:
        Whether the study has all its trials.
    """
    sampler = study.sampler
    if not isinstance(sampler, GenomeSampler) or sampler.generations is None:
        raise ValueError("optimize_until_finished needs a gmsearch sampler (e.g. NicheEvolutionSampler) with "
                         "generations set")
    total = sampler.n_planned
    progress = _Progress(max_consecutive_failures)
    heartbeat = is_heartbeat_enabled(storage_of(study))
    while not sampler.is_finished(study) and not progress.tripped:
        interrupt.check()
        progress.worked = False
        remaining = max(_remaining(study, total), 1)  # at least one: a retry or a vacancy may need it
        try:
            # the sampler stops the loop once the generations are done (with other workers too)
            with _quiet_optuna_failures():
                study.optimize(
                    objective, n_trials=remaining, callbacks=[progress, *callbacks], show_progress_bar=show_progress_bar
                )
        except UpdateFinishedTrialError as exc:
            logger.warning("%s: another worker failed it as stale and re-queued it; going on", exc)
            continue
        except (Interrupted, KeyboardInterrupt):
            requeue_interrupted(study)
            raise Interrupted(interrupt.MESSAGE) from None
        if not progress.worked and not heartbeat:
            logger.warning(
                "study %s: the trials left are held by other workers; without a heartbeat they are never "
                "retried if those workers died", study.study_name,
            )
            break
    finished = sampler.is_finished(study)
    if finished:
        logger.info("study %s has all its %d trials", study.study_name, total)
    return finished


def run_worker(cfg: RunConfig, worker: int = 0, *, show_progress_bar: bool = True) -> optuna.Study:
    """Build the configured study and objective and work on it until it has all its trials."""
    study, objective, _ = build(cfg, worker=worker)
    optimize_until_finished(study, objective, show_progress_bar=show_progress_bar)
    return study


def worker_threads(workers: int) -> int:
    """Torch threads for each of ``workers`` processes on this host: its cores shared, not oversubscribed
    (GPU workers too: their host side runs there)."""
    return max(1, (os.cpu_count() or 1) // workers)


def _spawned(cfg_dict: dict[str, Any], worker: int, workers: int) -> None:
    from gmsearch import config

    logging.basicConfig(level=logging.INFO, format=f"[worker {worker}] %(levelname)s %(name)s: %(message)s")
    cfg = config.parse(cfg_dict)
    torch.set_num_threads(worker_threads(workers))
    with interrupt.stop_on_sigint():  # Ctrl-C reaches every process of the group
        try:
            run_worker(cfg, worker, show_progress_bar=False)
        except Interrupted:
            raise SystemExit(Interrupted.exit_code) from None


def other_process_warning(study: optuna.Study, storage: str) -> str | None:
    """A warning when another live process already works on ``study`` in SQLite storage (None: none does)."""
    if not storage.startswith("sqlite") or not is_heartbeat_enabled(storage_of(study)):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # dead processes' trials are no sign of a live one
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return None
    return (
        f"another process is working on study {study.study_name!r} ({len(running)} running trial(s)) in SQLite "
        f"storage {storage}: fine for a few processes on one machine, but use PostgreSQL for many workers "
        "(SQLite locks the whole file on every write)"
    )


def shared_storage_warning(storage: str, workers: int) -> str | None:
    """Why ``workers`` processes on ``storage`` may disappoint (None: no concern)."""
    if workers <= 1:
        return None
    if storage.startswith("sqlite"):
        return (
            f"{workers} workers share SQLite storage {storage}: fine on one machine for small studies, but "
            "use PostgreSQL for many workers (SQLite locks the whole file on every write)"
        )
    if storage.startswith("journal:"):
        return (
            f"{workers} workers share journal storage {storage}: it has no heartbeat, so the trial of a "
            "worker that dies stays RUNNING and is never retried; use PostgreSQL (or SQLite) for that"
        )
    return None


def run(
    cfg: RunConfig, *, workers: int | None = None, echo: Callable[[str], None] | None = None,
    show_progress_bar: bool = True,
) -> optuna.Study:
    """Run the study of ``cfg`` with ``workers`` processes and return it.

    ``workers`` wins when given; else ``cfg.workers_per_device`` on each device
    when set, else ``cfg.workers`` (:func:`gmsearch.pipeline.worker_count`).

    Cheap checks come first (nothing is written when one fails); ``echo`` gets
    the plan. With several workers, the parent prepares the shared caches and
    creates the study once, then spawns the workers (one GPU each round-robin,
    or CPU) and waits for them. Ctrl-C stops at a safe point: the interrupted
    children are re-queued and :class:`~gmsearch.errors.Interrupted` is raised.
    """
    n = pipeline.worker_count(cfg, workers)
    if n < 1:
        raise UsageError(f"workers must be >= 1, got {n}")
    pipeline.check(cfg)
    warning = shared_storage_warning(cfg.study.storage, n)
    if warning:
        logger.warning(warning)
    with interrupt.stop_on_sigint():
        built = pipeline.assemble(cfg, echo=echo, workers=workers)  # with workers: warms the caches, creates the study
        if n == 1:
            warning = other_process_warning(built.study, cfg.study.storage)
            if warning:
                logger.warning(warning)
            optimize_until_finished(built.study, built.objective, show_progress_bar=show_progress_bar)
            return built.study
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_spawned, args=(dataclasses.asdict(cfg), i, n)) for i in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if interrupt.requested() or any(p.exitcode == Interrupted.exit_code for p in procs):
            raise Interrupted(interrupt.MESSAGE)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        logger.warning("%d worker(s) exited with codes %s", len(bad), bad)
    return built.study
