"""Export one trained trial of a study: genome JSON, weights and a snippet that loads them.

``gmsearch export --storage URL --study NAME [--trial N | --best] [--out DIR]``
writes to ``DIR`` (default ``./<study>-trial<N>``):

- ``genome.json``: the trial's genome (:meth:`gmsearch.Genome.from_json` reads it);
- ``weights.pt``: the trained ``state_dict`` only, loadable with
  ``torch.load(path, weights_only=True)``;
- ``load_model.py``: rebuilds the network with :func:`gmsearch.build` and loads
  the weights (``load_model()``; run it to classify a random input);
- ``trial.json``: study, trial number, fitness values, accuracies, input shape;
- with ``--onnx`` (``pip install 'gmsearch[onnx]'``), ``model.onnx``: the same
  network for any ONNX runtime, without torch or gmsearch (input ``images``:
  ``N x C x H x W`` in ``[0, 1]``, any batch size; output ``logits``), written
  by ``torch.onnx.export`` (its graph exporter: the adaptive pooling that
  reconciles spatial sizes and the zero-padding of ``sum`` become ONNX
  operators) and, where onnxruntime is installed, checked against PyTorch on
  a random batch before anything is written.

The weights come from the Optuna artifact the trial stored (the refined
weights when :func:`gmsearch.refine` has refined that trial and
``refined=True``). Input shape and class count come from the weights file or
the study (user attr ``gmsearch:data``); options override them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from gmsearch.errors import EnvironmentProblem, UsageError
from gmsearch.nets.builder import GenomeNet, build
from gmsearch.nets.genome import Genome
from gmsearch.search import schema
from gmsearch.search.schema import DATA_KEY, GENOME_KEY
from gmsearch.search.study import open_study

_SNIPPET = '''"""Trial {trial} of study {study!r}, written by `gmsearch export`: rebuild it and load its weights.

{onnx_route}
"""

from pathlib import Path

import torch

import gmsearch as gms

HERE = Path(__file__).resolve().parent
IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE = {in_channels}, {num_classes}, ({height}, {width})


def load_model(device: str = "cpu") -> torch.nn.Module:
    """The trained network, in eval mode. Inputs: N x {in_channels} x {height} x {width} in [0, 1]."""
    genome = gms.Genome.from_json((HERE / "genome.json").read_text())
    net = gms.build(genome, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE)
    net.load_state_dict(torch.load(HERE / "weights.pt", map_location=device, weights_only=True))
    return net.to(device).eval()


if __name__ == "__main__":
    net = load_model()
    x = torch.rand(1, IN_CHANNELS, *IMAGE_SIZE)  # normalisation lives inside the model
    print("predicted class:", net(x).argmax(1).item())
'''


_ONNX_ROUTE = """Without torch or gmsearch: model.onnx is the same network for any ONNX runtime, e.g.
    import numpy as np, onnxruntime as ort
    session = ort.InferenceSession("path/to/model.onnx")
    logits = session.run(["logits"], {"images": x.astype(np.float32)})[0]  # x: N x C x H x W in [0, 1]"""

_NO_ONNX_ROUTE = """For a framework-free model.onnx (any ONNX runtime, no torch or gmsearch), export again with
--onnx (pip install 'gmsearch[onnx]')."""

#: Names of the ONNX graph's input and output.
ONNX_INPUT, ONNX_OUTPUT = "images", "logits"

#: Largest difference between onnxruntime's and PyTorch's logits the export accepts (float32 rounding).
ONNX_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_trial` wrote."""

    folder: Path
    trial: int
    files: list[Path]


def require_onnx() -> None:
    """Raise a one-line :class:`UsageError` unless what ``torch.onnx.export`` needs is installed."""
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(
            f"export --onnx needs {' and '.join(missing)}, not installed: pip install 'gmsearch[onnx]'"
        )


def onnx_model(net: GenomeNet) -> bytes:
    """``net`` (in eval mode) as a self-contained ONNX model whose batch size is free.

    The graph exporter (``dynamo=True``, the default) is used: the TorchScript
    one cannot export adaptive pooling between sizes that do not divide.
    When onnxruntime is installed, its logits on a random batch are compared
    with PyTorch's (:data:`ONNX_TOLERANCE`).
    """
    net = net.eval()
    x = torch.rand(2, net.in_channels, *net.image_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            net, (x,), dynamo=True, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
        )
    if program is None:  # pragma: no cover - only the TorchScript exporter returns None
        raise EnvironmentProblem(
            f"torch.onnx.export returned no model (torch {torch.__version__}): export --onnx needs its graph exporter"
        )
    model: bytes = program.model_proto.SerializeToString()
    try:
        import onnxruntime
    except ImportError:
        return model
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(x).numpy()
    got = session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0]
    gap = float(abs(got - expected).max())
    if not gap <= ONNX_TOLERANCE:
        raise EnvironmentProblem(
            f"the ONNX model's logits differ from PyTorch's by {gap:.2g} (> {ONNX_TOLERANCE:g}); nothing written"
        )
    return model


def _choose(study: optuna.Study, number: int | None) -> FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        for t in trials:
            if t.number == number:
                return t
        raise ValueError(
            f"study {study.study_name!r} has no trial {number} "
            f"(its trials: {f'0..{len(trials) - 1}' if trials else 'none'})"
        )
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ValueError(f"study {study.study_name!r} has no completed trial to export")
    if len(study.directions) > 1:
        front = sorted(t.number for t in study.best_trials)
        raise ValueError(
            f"study {study.study_name!r} has {len(study.directions)} objectives, so no single best trial; "
            f"pick one of the Pareto-optimal trials {front} with --trial"
        )
    return study.best_trial


def _shape_from_state_dict(state: dict[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """(in_channels, num_classes) read off the first conv and the last linear layer."""
    convs = [v for v in state.values() if v.dim() == 4]
    linears = [v for k, v in state.items() if v.dim() == 2 and k.endswith("weight")]
    return (int(convs[0].shape[1]) if convs else None, int(linears[-1].shape[0]) if linears else None)


def _parse_image_size(value: int | Sequence[int] | str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace("x", ",").split(",")
        try:
            numbers = [int(p) for p in parts if p.strip()]
        except ValueError:
            raise ValueError(f"image size must be H or HxW, got {value!r}") from None
        value = numbers
    sizes = [value] if isinstance(value, int) else list(value)
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"image size must be H or HxW with positive sizes, got {value!r}")
    return sizes[0], sizes[1]


def export_trial(
    *,
    storage: str,
    study_name: str | None = None,
    trial: int | None = None,
    out: str | Path | None = None,
    artifacts: str | Path | None = None,
    refined: bool = False,
    image_size: int | Sequence[int] | str | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    onnx: bool = False,
) -> ExportResult:
    """Write ``genome.json``, ``weights.pt``, ``load_model.py``, ``trial.json`` (and ``model.onnx``) for one trial.

    Args:
        storage: Storage URL of the study (``sqlite:///...``, ``postgresql://...``, ``journal:FILE``).
        study_name: The study (None: the only study in ``storage``).
        trial: Trial number; None exports the best trial.
        out: Folder to write (default ``./<study>-trial<N>``).
        artifacts: The artifact store folder; default ``gmsearch_artifacts``
            beside the SQLite/journal file, then in the current directory.
        refined: Export the weights :func:`gmsearch.refine` stored for the trial.
        image_size: Input height (and width) when neither the weights nor the study record it.
        in_channels: Input channels, overriding what was recorded.
        num_classes: Number of classes, overriding what was recorded.
        onnx: Also write ``model.onnx`` (needs ``pip install 'gmsearch[onnx]'``).

    Raises:
        ValueError: unknown storage, study or trial; a trial without genome or
            weights; weights that do not fit the rebuilt network; ``onnx``
            without the packages it needs (checked first).
    """
    if onnx:
        require_onnx()
    study = open_study(storage, study_name)
    chosen = _choose(study, trial)
    if GENOME_KEY not in chosen.system_attrs:
        raise ValueError(f"trial {chosen.number} has no genome (state {chosen.state.name}); nothing to export")
    genome = Genome.from_json(chosen.system_attrs[GENOME_KEY])
    artifact_id = schema.trial_weights_id(chosen, refined_from=study if refined else None)
    payload = schema.load_weights(artifact_id, schema.artifact_dirs(study, artifacts))
    state = payload["state_dict"] if "state_dict" in payload else payload
    recorded: dict[str, Any] = {**(study.user_attrs.get(DATA_KEY) or {}), **payload}
    guessed_channels, guessed_classes = _shape_from_state_dict(state)
    shape = recorded.get("input_shape")
    channels = in_channels or (int(shape[0]) if shape else guessed_channels)
    classes = num_classes or recorded.get("num_classes") or guessed_classes
    hw = _parse_image_size(image_size) or ((int(shape[1]), int(shape[2])) if shape else None)
    if hw is None or channels is None or classes is None:
        raise ValueError(
            f"trial {chosen.number}: neither its weights nor the study record the input size; "
            "pass --image-size H[xW] (and --in-channels / --num-classes if needed)"
        )
    net = build(genome, in_channels=channels, num_classes=int(classes), image_size=hw)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"the weights of trial {chosen.number} do not fit the network rebuilt for input "
            f"{channels}x{hw[0]}x{hw[1]} and {classes} classes: {exc}"
        ) from exc
    model = onnx_model(net) if onnx else None  # before anything is written
    folder = Path(out) if out is not None else Path.cwd() / f"{study.study_name}-trial{chosen.number}"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["genome.json", "weights.pt", "load_model.py", "trial.json"] + (["model.onnx"] if model else [])
    files = [folder / name for name in names]
    files[0].write_text(genome.to_json(indent=2) + "\n")
    torch.save(dict(state), files[1])
    files[2].write_text(_SNIPPET.format(
        trial=chosen.number, study=study.study_name, in_channels=channels, num_classes=int(classes),
        height=hw[0], width=hw[1], onnx_route=_ONNX_ROUTE if model else _NO_ONNX_ROUTE,
    ))
    info = {
        "study": study.study_name, "trial": chosen.number, "state": chosen.state.name, "values": chosen.values,
        "clean_acc": chosen.user_attrs.get("clean_acc"), "adv_acc": chosen.user_attrs.get("adv_acc"),
        "epochs": chosen.user_attrs.get("epochs"), "refined": refined,
        "input_shape": [channels, hw[0], hw[1]], "num_classes": int(classes), "weights_artifact": artifact_id,
    }
    files[3].write_text(json.dumps(info, indent=2) + "\n")
    if model is not None:
        files[4].write_bytes(model)
    return ExportResult(folder=folder, trial=chosen.number, files=files)
