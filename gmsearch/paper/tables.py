"""The paper's tables (1-6), Fig. 3 and the gradient-masking check, each a function of an :class:`Experiment`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gmsearch import data as datasets
from gmsearch.attacks import AdversarialSet
from gmsearch.evaluation import (
    EvalResult,
    MaskingReport,
    TransferMatrix,
    evaluate,
    fooling_rate_from_predictions,
    gradient_masking_checks,
    predict,
    transfer_matrix,
)
from gmsearch.nets import references
from gmsearch.paper.harness import Experiment
from gmsearch.paper.settings import PAPER, PaperTable, dataset_label
from gmsearch.search.schema import genome_of
from gmsearch.training.defenses import (
    BilateralDefense,
    JPEGDefense,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the tables


def _pct_paper(key: str, label: str) -> list[float | None] | None:
    value = PAPER.get(key, {}).get(label)
    return list(value) if isinstance(value, list) else None


def _eval_rows(exp: Experiment, nets: Mapping[str, nn.Module], adv: AdversarialSet) -> dict[str, EvalResult]:
    return {name: evaluate(net, exp.data, adversarial=adv, reference=exp.reference) for name, net in nets.items()}


def table1(exp: Experiment, *, top: int = 2) -> PaperTable:
    """Table 1: clean and adversarial accuracy of Ref, Ref+GM and the top NE+GM networks."""
    evolved = exp.evolved(top)
    nets: dict[str, nn.Module] = {"Ref.": exp.reference, "Ref.+GM": exp.ref_gm()}
    nets.update({name: net for name, net, _ in evolved})
    adv = exp.adversarial("pgd_linf")
    results = _eval_rows(exp, nets, adv)
    columns = list(nets)
    paper_cols = ["Ref.", "Ref.+GM", "NE+GM 1", "NE+GM 2"]

    def paper(label: str) -> list[float | None]:
        values = _pct_paper("table1", label) or []
        return [values[paper_cols.index(c)] if c in paper_cols and values else None for c in columns]

    rows: list[tuple[str, list[float | None]]] = [
        ("Clean Acc.", [results[c].clean_acc for c in columns]),
        ("Adv. Acc. (L-inf PGD)", [results[c].adv_acc for c in columns]),
        ("Fooling (4.2.2)", [results[c].fooling_rate for c in columns]),
    ]
    return PaperTable(
        budget=exp.budget(),
        key="table1",
        title="Table 1: clean and adversarial accuracy (adversarial examples transferred from the reference)",
        columns=columns, rows=rows,
        paper={"Clean Acc.": paper("Clean Acc."), "Adv. Acc. (L-inf PGD)": paper("Adv. Acc. (L-inf PGD)")},
        notes=[
            f"attack: {adv.attack}; Ref.'s adversarial accuracy is white-box",
            f"NE+GM trials: {', '.join(str(t.number) for _, _, t in evolved)}; baselines trained "
            f"{exp.network_epochs()} epochs",
            f"paper setting: {PAPER['table1']['setting']}",
        ],
        extra={"trials": [t.number for _, _, t in evolved], "eval": {k: v.as_dict() for k, v in results.items()}},
    )


#: Display names of the paper's transfer sources.
SOURCE_NAMES = {"resnet18": "ResNet-18", "vgg11_bn": "VGG", "densenet121": "DenseNet", "squeezenet1_1": "SqueezeNet"}


def table2(
    exp: Experiment,
    *,
    sources: Sequence[str] = ("resnet18", "vgg11_bn", "densenet121", "squeezenet1_1"),
    extra_sources: Mapping[str, nn.Module] | None = None,
) -> tuple[PaperTable, TransferMatrix]:
    """Table 2: adversarial accuracy of Ref, Ref+GM and NE+GM on examples from other source networks.

    Sources are trained independently with plain cross-entropy (cached); the
    reference itself is added as a source, and so are ``extra_sources``.
    """
    (_, ne_gm, trial), = exp.evolved(1)
    targets: dict[str, nn.Module] = {"Ref.": exp.reference, "Ref.+GM": exp.ref_gm(), "NE+GM": ne_gm}
    source_models: dict[str, nn.Module] = {}
    for arch in sources:
        exp.log(f"source {arch}: training ({exp.settings.source_epochs} epochs, cached)")
        source_models[SOURCE_NAMES.get(arch, arch)] = exp.source_model(arch)
    source_models["Reference"] = exp.reference
    source_models.update(extra_sources or {})
    part = exp.test_split()
    exp.log(f"transfer matrix: {len(source_models)} sources x {len(targets)} targets on {len(part)} test images")
    matrix = transfer_matrix(
        source_models, targets, part, attack=exp.attack("pgd_linf"), cache_dir=exp.cache_dir,
        exclude_white_box=True,
    )
    columns = list(targets)
    rows: list[tuple[str, list[float | None]]] = [
        (s, [matrix.cell(s, t) for t in columns]) for s in matrix.sources
    ]
    rows.append(("worst case", list(matrix.worst_case)))
    rows.append(("per-image worst", list(matrix.per_image_worst_case)))
    paper = {s: v for s in matrix.sources if (v := _pct_paper("table2", s)) is not None}
    source_acc = ", ".join(f"{s} {100 * a:.1f}%" for s, a in zip(matrix.sources, matrix.source_clean_acc, strict=True))
    table = PaperTable(
        budget=exp.budget(),
        key="table2",
        title="Table 2: adversarial accuracy on examples transferred from other source networks (rows: source)",
        columns=columns, rows=rows, paper=paper,
        notes=[
            f"attack: {matrix.attack}; {matrix.n_images} test images; Reference->Ref. is white-box "
            "(left out of the worst cases)",
            f"source clean accuracy: {source_acc}",
            "worst case: lowest accuracy over sources; per-image: correct under every source's example",
            f"NE+GM: trial {trial.number}; paper setting: {PAPER['table2']['setting']}",
        ],
        extra={"transfer_matrix": matrix.as_dict()},
    )
    return table, matrix


def paper_dataset(spec: str) -> str | None:
    name = dataset_label(spec).lower()
    for key, label in (("fashion", "FMNIST"), ("fmnist", "FMNIST"), ("kmnist", "KMNIST"), ("mnist", "MNIST")):
        if key in name:
            return label
    return None


def table3(
    exp: Experiment, *, targets: Sequence[str], reduced: bool = True, epochs: int | None = None
) -> PaperTable:
    """Tables 3 / 7: the best evolved architecture retrained from scratch on other datasets.

    For each target dataset: the reference architecture is trained on it
    (cached) and attacked; Ref+GM and the NE+GM *architecture* (genome of the
    best candidate) are trained from scratch with GM against that reference.

    Args:
        exp: The experiment whose search produced the architecture.
        targets: Dataset specs (names or ``.npz`` paths); missing ones are skipped with a note.
        reduced: Use the reduced protocol on the targets (Table 7; otherwise Table 3).
        epochs: GM epochs on each target (default :meth:`Experiment.network_epochs`).
    """
    (_, _, trial), = exp.evolved(1)
    genome = genome_of(trial)
    epochs = exp.network_epochs() if epochs is None else epochs
    key = "table7" if reduced else "table3"
    columns = ["Ref.", "Ref.+GM", "NE+GM"]
    rows: list[tuple[str, list[float | None]]] = []
    paper: dict[str, list[float | None]] = {}
    notes = []
    done = []
    for spec in targets:
        settings = replace(exp.settings, dataset=spec, reduced=reduced, study_name=f"{exp.study_name}-retrain")
        try:
            target = Experiment(settings, verbose=exp.verbose)
        except (datasets.DatasetNotFoundError, FileNotFoundError) as exc:
            notes.append(f"skipped {spec}: {str(exc).splitlines()[0][:160]}")
            exp.log(f"skipping target {spec}: not available")
            continue
        label = dataset_label(spec)
        ref_gm = target.ref_gm(epochs=epochs)
        ne_gm = target.trained("NE+GM", target.genome_factory(genome), architecture=genome.to_json(), epochs=epochs)
        adv = target.adversarial("pgd_linf")
        res = {name: evaluate(net, target.data, adversarial=adv, reference=target.reference)
               for name, net in {"Ref.": target.reference, "Ref.+GM": ref_gm, "NE+GM": ne_gm}.items()}
        rows.append((f"{label} Clean Acc.", [res[c].clean_acc for c in columns]))
        rows.append((f"{label} Adv. Acc.", [res[c].adv_acc for c in columns]))
        paper_name = paper_dataset(spec)
        paper_rows = PAPER[key].get(paper_name, {}) if paper_name else {}
        if paper_rows:
            paper[f"{label} Clean Acc."] = list(paper_rows["Clean Acc."])
            paper[f"{label} Adv. Acc."] = list(paper_rows["Adv. Acc. (L-inf PGD)"])
        notes.append(f"{label}: {target.data!r}; attack {adv.attack}")
        done.append(label)
    if not done:
        raise RuntimeError(
            "no target dataset could be loaded: " + "; ".join(notes) + ". Pass --targets with .npz paths, e.g. "
            "--targets /path/to/mnist.npz"
        )
    notes.append(f"NE+GM architecture: trial {trial.number} of {exp.study_name!r} ({genome.summary()})")
    notes.append(f"every network trained {epochs} epochs on each target; paper setting: {PAPER[key]['setting']}")
    return PaperTable(
        budget=exp.budget(),
        key=key,
        title=f"Table {'7' if reduced else '3'}: the evolved architecture retrained on other datasets",
        columns=columns, rows=rows, paper=paper, notes=notes,
        extra={"targets": done, "genome": genome.to_json(), "trial": trial.number},
    )


def table4(exp: Experiment, *, hand: str = "hand_b", top: int = 2) -> PaperTable:
    """Table 4: reduced data with the hand-engineered baseline: Ref, Ref+GM, HE+GM, NE+GM 1/2."""
    evolved = exp.evolved(top)
    nets: dict[str, nn.Module] = {"Ref.": exp.reference, "Ref.+GM": exp.ref_gm(), "HE+GM": exp.hand_gm(hand)}
    nets.update({name: net for name, net, _ in evolved})
    adv = exp.adversarial("pgd_linf")
    results = _eval_rows(exp, nets, adv)
    columns = list(nets)
    return PaperTable(
        budget=exp.budget(),
        key="table4",
        title=f"Table 4: reduced-data baselines with the hand-engineered network {hand} (HE+GM)",
        columns=columns,
        rows=[
            ("Clean Acc.", [results[c].clean_acc for c in columns]),
            ("Adv. Acc. (L-inf PGD)", [results[c].adv_acc for c in columns]),
        ],
        notes=[
            f"attack: {adv.attack}; Ref.'s adversarial accuracy is white-box; baselines trained "
            f"{exp.network_epochs()} epochs",
            f"paper: {PAPER['table4']['setting']}",
        ],
        extra={"eval": {k: v.as_dict() for k, v in results.items()}, "trials": [t.number for _, _, t in evolved]},
    )


def table5(
    exp: Experiment,
    *,
    attack_names: Sequence[str] = ("pgd_linf", "pgd_l2", "fgsm"),
    fgsm_eps: float | None = None,
    hand: str = "hand_b",
    top: int = 2,
) -> PaperTable:
    """Table 5: fooling rate (paper 4.2.2) under L-inf PGD, L2 PGD and FGSM from the reference.

    Args:
        exp: The experiment.
        attack_names: Registered attacks, each with :meth:`Experiment.attack_params`.
        fgsm_eps: FGSM budget (the paper raised FGSM's eps without saying to
            what; default: the L-inf PGD eps).
        hand: The hand-engineered baseline.
        top: NE+GM networks.
    """
    evolved = exp.evolved(top)
    nets: dict[str, nn.Module] = {"Ref.+GM": exp.ref_gm(), "HE+GM": exp.hand_gm(hand)}
    nets.update({name: net for name, net, _ in evolved})
    columns = list(nets)
    labels = {"pgd_linf": "L-inf PGD", "pgd_l2": "L2 PGD", "fgsm": "FGSM"}
    rows: list[tuple[str, list[float | None]]] = []
    paper: dict[str, list[float | None]] = {}
    notes = []
    for name in attack_names:
        atk = exp.attack(name, **({"eps": fgsm_eps} if name == "fgsm" and fgsm_eps is not None else {}))
        adv = exp.adversarial(atk)
        label = labels.get(name, name)
        rows.append((label, [evaluate(net, exp.data, adversarial=adv, reference=exp.reference).fooling_rate
                             for net in nets.values()]))
        if (values := _pct_paper("table5", label)) is not None:
            paper[label] = values[: len(columns)]
        notes.append(f"{label}: {adv.attack}")
    notes.append("fooling rate 4.2.2: among test images both the reference and the network classify correctly, "
                 "the share whose adversarial version (from the reference) fools the network; lower is better")
    notes.append(f"paper setting: {PAPER['table5']['setting']}")
    return PaperTable(
        budget=exp.budget(), key="table5", title="Table 5: fooling rate under three attacks (lower is better)",
        columns=columns, rows=rows, paper=paper, notes=notes,
    )


def table6(
    exp: Experiment,
    *,
    hand: str = "hand_b",
    jpeg_quality: int = 75,
    bilateral: Mapping[str, Any] | None = None,
    free_replays: int = 4,
) -> PaperTable:
    """Table 6: fooling rate (paper 4.2.3) of the GM networks and of the reference with standard defenses.

    The adversarial examples are L-inf PGD from the reference on the test
    images it classifies correctly, the same for every network. JPEG and the
    bilateral filter preprocess the reference's input; free and fast
    adversarial training train a fresh copy of the reference's architecture
    (eps = the attack's eps; free AT runs ``ceil(E / replays)`` passes with
    ``replays`` replays, fast AT ``E`` epochs, ``E`` = :meth:`Experiment.network_epochs`).

    Args:
        exp: The experiment.
        hand: The hand-engineered baseline (HE+GM).
        jpeg_quality: JPEG quality (Guo et al. use 75).
        bilateral: :class:`~gmsearch.defenses.BilateralDefense` settings; the
            default range sigma (``sigma_color`` None) is ``max(0.1, 2 eps)``:
            a filter whose range sigma is below the perturbation's size keeps
            the perturbation (edges are preserved by design).
        free_replays: Minibatch replays of free adversarial training.
    """
    (_, ne_gm, trial), = exp.evolved(1)
    epochs = exp.network_epochs()
    atk = exp.attack("pgd_linf")
    eps = float(atk.eps)
    arch = exp.settings.reference
    filt = {"kernel_size": 5, "sigma_space": 1.0, "sigma_color": None, **(bilateral or {})}
    if filt["sigma_color"] is None:
        filt["sigma_color"] = round(max(0.1, 2 * eps), 4)
    nets: dict[str, nn.Module] = {
        "Ref.": exp.reference, "Ref.+GM": exp.ref_gm(), "HE+GM": exp.hand_gm(hand), "NE+GM": ne_gm,
        "JPEG Comp.": JPEGDefense(exp.reference, quality=jpeg_quality),
        "Bilateral Filt.": BilateralDefense(exp.reference, **filt),
        "A.T. (Free)": exp.trained(
            "AT-free", exp.architecture(arch), architecture=arch, method="free_at",
            epochs=max(1, math.ceil(epochs / free_replays)), eps=eps, replays=free_replays,
        ),
        "A.T. (Fast)": exp.trained(
            "AT-fast", exp.architecture(arch), architecture=arch, method="fast_at", epochs=epochs, eps=eps,
        ),
    }
    adv = exp.adversarial(atk)
    x, y = exp.data.test.x, exp.data.test.y
    ref_pred = predict(exp.reference, x).to(y.device)
    fooling: dict[str, float] = {}
    clean: dict[str, float] = {}
    for name, net in nets.items():
        adv_pred = predict(net, adv.x).to(y.device)
        fooling[name] = fooling_rate_from_predictions(
            None, adv_pred, y, reference_pred=ref_pred, definition="reference"
        )
        clean[name] = (predict(net, x).to(y.device) == y).float().mean().item()
    columns = list(nets)
    paper6 = PAPER["table6"]
    return PaperTable(
        budget=exp.budget(),
        key="table6",
        title="Table 6: fooling rate 4.2.3 of GM networks and of the reference with defenses (lower is better)",
        columns=columns,
        rows=[("L-inf PGD (fooling)", [fooling[c] for c in columns]), ("clean acc.", [clean[c] for c in columns])],
        paper={"L-inf PGD (fooling)": [paper6[c] for c in columns]},
        wrap=4,
        notes=[
            f"attack: {adv.attack} on the {int((ref_pred == y).sum())} test images the reference gets right "
            "(the same examples for every column)",
            f"defenses: JPEG quality {jpeg_quality}; bilateral {filt}; A.T. eps {eps:.4g} (free: {free_replays} "
            f"replays, {max(1, math.ceil(epochs / free_replays))} passes; fast: alpha 1.25 eps, {epochs} epochs)",
            f"paper setting: {paper6['setting']}",
        ],
        extra={
            "fooling_rate_reference": fooling, "clean_acc": clean, "jpeg_quality": jpeg_quality,
            "bilateral": filt, "at_eps": eps, "free_replays": free_replays, "epochs": epochs,
            "ne_gm_trial": trial.number,
        },
    )


def masking_checks(exp: Experiment, net: nn.Module, *, surrogate_arch: str = "hand_b") -> MaskingReport:
    """:func:`~gmsearch.evaluation.gradient_masking_checks` on ``net`` with an independently trained surrogate."""
    surrogate = references.get(
        surrogate_arch, exp.data, epochs=exp.settings.reference_epochs, seed=exp.settings.seed + 1000,
        device=exp.device, cache_dir=exp.cache_dir,
    )
    steps = max(5, exp.settings.attack_steps)
    limit = exp.settings.test_limit or 500
    return gradient_masking_checks(
        net, exp.data, steps=steps, surrogate=surrogate, limit=limit, cache_dir=exp.cache_dir, seed=exp.settings.seed
    )


def fig3(
    exp: Experiment, *, n_show: int = 4, n_distance: int = 100, out_dir: str | Path | None = None
) -> tuple[PaperTable, dict[str, Path]]:
    """Fig. 3: integrated gradients of Ref, Ref+GM and NE+GM, and their total pixel distance to Ref.

    Maps are computed for the first ``n_distance`` test images all three
    networks classify correctly (for the true label); the distance is
    averaged over them and the first ``n_show`` are drawn. Writes
    ``fig3_attributions.html`` (plotly, self-contained) and ``.png`` (matplotlib).
    """
    from gmsearch.evaluation.attribution import (
        attribution_figure,
        integrated_gradients,
        total_pixel_distance,
        write_attribution_png,
    )

    (_, ne_gm, trial), = exp.evolved(1)
    nets = {"Ref.": exp.reference, "Ref.+GM": exp.ref_gm(), "NE+GM": ne_gm}
    x, y = exp.data.test.x, exp.data.test.y
    correct = torch.ones_like(y, dtype=torch.bool)
    for net in nets.values():
        correct &= predict(net, x).to(y.device) == y
    idx = torch.nonzero(correct).flatten()[:n_distance]
    if len(idx) == 0:
        raise RuntimeError("no test image is classified correctly by all three networks")
    xs, ys = x[idx], y[idx]
    steps = exp.settings.ig_steps
    maps = {name: integrated_gradients(net, xs, ys, steps=steps, internal_batch_size=512) for name, net in nets.items()}
    distances = {name: total_pixel_distance(maps[name], maps["Ref."]) for name in nets if name != "Ref."}
    out = Path(out_dir) if out_dir is not None else exp.workdir
    out.mkdir(parents=True, exist_ok=True)
    shown = {k: v[:n_show] for k, v in maps.items()}
    labels = [f"label {exp.data.class_names[int(c)]}" for c in ys[:n_show]]
    fig = attribution_figure(xs[:n_show], shown, reference="Ref.", labels=labels,
                             title=f"Integrated gradients ({exp.settings.label()}, {steps} steps)")
    html = out / "fig3_attributions.html"
    fig.write_html(str(html), include_plotlyjs=True)
    files = {"html": html}
    try:
        files["png"] = write_attribution_png(out / "fig3_attributions.png", xs[:n_show], shown, reference="Ref.",
                                             labels=labels)
    except ImportError as exc:  # matplotlib comes with captum, but don't fail the figure on it
        exp.log(f"no PNG written: {exc}")
    table = PaperTable(
        budget=exp.budget(),
        key="fig3",
        title="Fig. 3: total pixel distance of integrated-gradient maps to the reference's (higher: more misaligned)",
        columns=["Ref.+GM", "NE+GM"],
        rows=[("distance", [distances["Ref.+GM"], distances["NE+GM"]])],
        percent=False,
        paper={"distance": [PAPER["fig3"]["Ref.+GM"], PAPER["fig3"]["NE+GM"]]},
        notes=[
            f"distance: mean |a - b| per pixel of maps normalised to [-1, 1] per image, averaged over {len(idx)} "
            "test images all three networks get right (range 0..2)",
            "the paper's distances (one CIFAR-10 image) use a scale it does not define: compare the ordering",
            f"NE+GM: trial {trial.number}; IG: {steps} steps from a black baseline, target = true label",
            f"figure: {html}" + (f" and {files['png']}" if "png" in files else ""),
        ],
        extra={
            "distances": distances, "n_images": len(idx), "ig_steps": steps, "figure_html": str(html),
            "shown": {"images": [round(float(v), 3) for v in xs[:n_show].flatten().tolist()],
                      "shape": list(xs[:n_show].shape), "labels": [int(c) for c in ys[:n_show]],
                      "maps": {k: [round(float(v), 3) for v in m.flatten().tolist()] for k, m in shown.items()}},
        },
    )
    return table, files
