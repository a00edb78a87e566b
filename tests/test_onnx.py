"""`gmsearch export --onnx`: onnxruntime gives PyTorch's logits on the study's test images, for every block kind.

One stored trial (no training: default weights and random BatchNorm statistics) whose genome has every
body kind, a dead end, sums that zero-pad either input, merges and a head whose adaptive pooling
goes between sizes that do not divide (13x13 digits), exported through the command line.
"""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

import gmsearch as gms
from gmsearch import cli
from gmsearch.data import Dataset
from gmsearch.nets.builder import HEAD_GRID, GenomeNet
from gmsearch.nets.genome import BODY_KINDS, Block, Genome
from gmsearch.report import export
from gmsearch.search import schema
from gmsearch.search.schema import GENOME_KEY, WEIGHTS_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)

IMAGE = 13  # odd: strided convs give 7x7, pools 6x6, so merges and the head pool between sizes that do not divide


def _conv(src: int, channels: int, kernel: int, kind: str = "conv") -> Block:
    return Block(kind, (src,), out_channels=channels, kernel_size=kernel)


GENOME = Genome(
    (
        _conv(-1, 4, 3),                     # 0: 4x13x13
        _conv(0, 6, 3, "sconv"),             # 1: 6x7x7
        Block("pool", (0,), pool_type="max"),  # 2: 4x6x6
        Block("sum", (2, 1)),                # 3: 6x6x6, first input zero-padded 4 -> 6, second pooled 7 -> 6
        Block("concat", (3, -1)),            # 4: 7x6x6, the image pooled 13 -> 6
        Block("pool", (-1,), pool_type="avg"),  # 5: 1x6x6
        Block("sum", (4, 5)),                # 6: 7x6x6, second input zero-padded 1 -> 7
        _conv(6, 3, 1),                      # 7: a dead end
        Block("concat", (6, 1)),             # 8: 13x6x6, the output; the head pools 6 -> 4
    ),
    head=(Block("fc", units=7),),
)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Iterator[tuple[str, Dataset, GenomeNet]]:
    """A study holding one trial of GENOME with weights, as `gmsearch run` stores it."""
    work = tmp_path_factory.mktemp("onnx")
    data = gms.datasets.load("digits", seed=0, image_size=IMAGE)
    url = f"sqlite:///{work / 'study.db'}"
    study = gms.create_study(study_name="onnx", storage=url, sampler=gms.NicheEvolutionSampler(seed=0))
    schema.record_data(study, data)
    torch.manual_seed(0)
    net = gms.build(GENOME, data.input_shape[0], data.num_classes, data.input_shape[1:])
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # trained-looking statistics, so eval mode is not the identity
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    net.eval()
    store = schema.open_artifact_store(work / "gmsearch_artifacts")  # where export looks by default
    artifact = schema.save_weights(store, study, net, GENOME, input_shape=data.input_shape,
                                   num_classes=data.num_classes)
    study.add_trial(optuna.trial.create_trial(
        value=0.5, system_attrs={GENOME_KEY: GENOME.to_json()}, user_attrs={WEIGHTS_KEY: artifact}
    ))
    yield url, data, net


def test_export_onnx_gives_pytorchs_logits_on_the_test_images(
    stored: tuple[str, Dataset, GenomeNet], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx
    import onnxruntime

    url, data, net = stored
    # every body kind (both pools), a dead end, sums zero-padding either input, pooling between sizes that do not divide
    assert all(n > 0 for n in GENOME.spectrum()) and len(BODY_KINDS) == 5 and GENOME.head
    assert {b.pool_type for b in GENOME.blocks if b.kind == "pool"} == {"max", "avg"} and 7 not in net.live
    shapes = {-1: (1, IMAGE, IMAGE), **dict(enumerate(net.shapes))}
    merges = [(i, s) for i in net.live if GENOME.blocks[i].kind in ("sum", "concat") for s in GENOME.blocks[i].inputs]
    assert [i for i, s in merges if shapes[s][1] % shapes[i][1]] == [3, 4, 8]
    assert [GENOME.blocks[i].inputs.index(s) for i, s in merges
            if GENOME.blocks[i].kind == "sum" and shapes[s][0] < shapes[i][0]] == [0, 1]
    assert shapes[GENOME.output_index][1] % HEAD_GRID

    out = tmp_path / "best"
    assert cli.main(["export", "--storage", url, "--best", "--onnx", "--out", str(out)]) == 0
    assert "model.onnx" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "genome.json", "load_model.py", "model.onnx", "trial.json", "weights.pt"
    ]
    model = onnx.load(str(out / "model.onnx"))  # self-contained: no external data file
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # any batch size
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = data.test.x
    with torch.no_grad():
        expected = net(x).numpy()
        loaded = runpy.run_path(str(out / "load_model.py"))["load_model"]()(x).numpy()
    np.testing.assert_array_equal(loaded, expected)
    logits = session.run(["logits"], {"images": x.numpy()})[0]
    assert logits.shape == (len(x), data.num_classes) and float(np.abs(expected).max()) > 0.1
    assert float(np.abs(logits - expected).max()) <= 1e-5
    one = session.run(["logits"], {"images": x[:1].numpy()})[0]  # batch size 1 as well
    assert float(np.abs(one - expected[:1]).max()) <= 1e-5
    assert "onnxruntime" in (out / "load_model.py").read_text()
    assert json.loads((out / "trial.json").read_text())["input_shape"] == [1, IMAGE, IMAGE]


def test_export_onnx_without_the_extra_says_what_to_install_and_writes_nothing(
    stored: tuple[str, Dataset, GenomeNet], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _, _ = stored
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` fails as if not installed
    assert cli.main(["export", "--storage", url, "--onnx", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'gmsearch[onnx]'" in err and "onnxscript" in err
    assert not (tmp_path / "x").exists()
    # without --onnx the export needs none of it
    assert cli.main(["export", "--storage", url, "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "model.onnx").exists()
    assert "--onnx" in (tmp_path / "plain" / "load_model.py").read_text()


def test_an_onnx_model_that_disagrees_with_pytorch_is_not_written(
    stored: tuple[str, Dataset, GenomeNet], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _, _ = stored
    monkeypatch.setattr(export, "ONNX_TOLERANCE", -1.0)  # any difference, even none, is too much
    assert cli.main(["export", "--storage", url, "--onnx", "--out", str(tmp_path / "x")]) == 1
    assert "differ from PyTorch's" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
