"""GM against several references (``[training] references``): the mean of the per-reference terms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import gmsearch as gms
from gmsearch import config, pipeline
from gmsearch.data import Dataset
from gmsearch.errors import UsageError
from gmsearch.training import gm_loss as losses


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double()


def test_the_gm_term_of_k_references_is_the_mean_of_their_terms() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 1, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    child, refs = _net(0), [_net(1), _net(2), _net(3)]
    grads = [losses.input_gradients(r, x, y) for r in refs]
    for variant in losses.names():
        singles = [losses.gm_objective(child, x, y, gr, variant=variant) for gr in grads]
        ce, gm = losses.gm_objective(child, x, y, torch.stack(grads), variant=variant)
        assert torch.allclose(ce, singles[0][0])
        assert torch.allclose(gm, torch.stack([s[1] for s in singles]).mean()), variant
        # and its parameter gradient is the mean of theirs (the term is differentiable as one)
        (mean_grad,) = torch.autograd.grad(gm, child[0].weight)
        each = [torch.autograd.grad(s[1], child[0].weight)[0] for s in singles]
        assert torch.allclose(mean_grad, torch.stack(each).mean(0))
    one = losses.gm_objective(child, x, y, torch.stack(grads[:1]))[1]  # K = 1 stacked: the single term
    assert torch.allclose(one, losses.gm_objective(child, x, y, grads[0])[1])
    with pytest.raises(ValueError, match=r"K x \(5, 1, 6, 6\) \(K references\), got \(2, 4, 1, 6, 6\)"):
        losses.gm_objective(child, x, y, torch.stack(grads[:2])[:, :4])


def test_training_against_a_list_of_references_uses_each(tiny_data: Callable[[int], Dataset]) -> None:
    data = tiny_data(24)
    refs = []
    for seed, name in ((0, "hand_a"), (1, "hand_b")):
        torch.manual_seed(seed)
        refs.append(gms.build(gms.zoo.genome(name), 1, 4, 8).eval())

    def trained(reference: object, **kwargs: object) -> torch.Tensor:
        torch.manual_seed(5)
        net = gms.build(gms.zoo.genome("hand_b"), 1, 4, 8)
        gms.train(net, data, reference=reference, epochs=1, batch_size=8, device="cpu", **kwargs)  # type: ignore[arg-type]
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    both = trained(refs)
    assert not torch.equal(both, trained(refs[0])) and not torch.equal(both, trained(refs[1]))
    assert torch.equal(trained([refs[0]]), trained(refs[0]))  # a list of one is the paper's GM
    stacked = torch.stack([losses.input_gradients(r, data.train.x, data.train.y) for r in refs])
    assert torch.allclose(trained(refs, ref_grads=stacked), both, atol=1e-6)  # precomputed: the same training
    # with an augmentation the references' gradients are taken on the fly, per reference
    assert torch.allclose(trained(refs, augment=lambda xb: xb), both, atol=1e-6)
    with pytest.raises(ValueError, match="lam != 0 needs a reference network"):
        trained([])


def test_config_names_the_references_and_the_objective_stacks_their_gradients(
    tiny_data: Callable[[int], Dataset], tmp_path: Path
) -> None:
    cfg = config.parse({"training": {"references": ["hand_a", "hand_b"]}, "reference": {"epochs": 1},
                        "study": {"cache_dir": str(tmp_path / "cache"), "storage": f"sqlite:///{tmp_path}/s.db"},
                        "device": "cpu"})
    assert cfg.training.references == ["hand_a", "hand_b"] and config.parse({}).training.references == []
    for bad in (["hand_a", "hand_a"], [""], [3]):
        with pytest.raises(config.ConfigError, match=r"\[training\] references must be distinct architecture"):
            config.parse({"training": {"references": bad}})
    unknown = config.parse({"training": {"references": ["hand_z"]}, "device": "cpu",
                            "study": {"storage": f"sqlite:///{tmp_path}/u.db", "cache_dir": str(tmp_path / "c")}})
    with pytest.raises(UsageError, match="references: unknown architecture 'hand_z'; choose from .*hand_a"):
        pipeline.check(unknown)
    data = tiny_data(24)
    reference = pipeline.make_reference(cfg, data, device="cpu")
    extra = pipeline.gm_references(cfg, data, device="cpu")  # hand_a is the reference: only hand_b more
    assert [getattr(r, "name", "") for r in extra] == ["hand_b"]
    objective = pipeline.make_objective(cfg, data, reference, device="cpu")
    assert objective.gm_references[0] is objective.reference and len(objective.gm_references) == 2
    assert objective.ref_grads is not None and objective.ref_grads.shape == (2, *data.train.x.shape)
    assert torch.allclose(objective.ref_grads[1], losses.input_gradients(extra[0], data.train.x, data.train.y),
                          atol=1e-6)
    assert "references=2" in objective.describe()


def test_the_multi_reference_benchmark_runs_both_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import bench_multi_reference as bench

    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for label in ("Ref+GM", "HE+GM"):
        assert f"  {label:<7} one: clean" in out and f"  {label:<7} two - one (paired): clean" in out
    fake = {s: {"Ref+GM": {st: {"clean": 0.9, "reference": 0.5, "worst": w, "all": w - 0.1}
                           for st, w in (("one", 0.5 + s / 10), ("two", 0.6 + s / 5))}} for s in (0, 1)}
    text = "\n".join(bench.lines(fake))  # worst: two - one = 0.1, 0.2 -> +15.0, sd 7.07, t 6.3138 -> -16.6
    assert "worst +15.0 (>= -16.6, 2/2)" in text and "worst 55.0 +- 7.1" in text
