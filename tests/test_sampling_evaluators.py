"""Sampling-based search: the early-stop and weight-sharing proxies, end-to-end search."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rankitect.search.sampling import EarlyStopProxy, SiGeoProxy, WeightSharingProxy
from rankitect.search.sampling.evaluators import batch_indices, sigeo_terms
from rankitect.space import load_space

DATA = {
    "_target_": "rankitect.data.CTRDataModule",
    "batch_size": 256,
    "source": {
        "_target_": "rankitect.data.SyntheticCTR",
        "n_train": 3000,
        "n_val": 200,
        "n_test": 200,
        "n_dense": 4,
        "cardinalities": [20, 30, 50, 40],
        "interactions": [["C1", "C2"]],
        "gates": [],
        "seed": 0,
    },
}


@pytest.fixture(scope="module")
def setup():
    dm = instantiate(OmegaConf.create(DATA))
    dm.prepare_data()
    dm.setup("fit")
    return dm, load_space("generic", dm.feature_spec)


def test_batch_indices_cover_the_budget_in_a_seeded_order():
    batches = list(batch_indices(10, 25, 4, seed=0))
    flat = torch.cat(batches)
    assert len(flat) == 25 and max(len(b) for b in batches) == 4
    # each pass is a permutation of the split; passes differ
    assert sorted(flat[:10].tolist()) == list(range(10))
    assert sorted(flat[10:20].tolist()) == list(range(10))
    assert not torch.equal(flat[:10], flat[10:20])
    assert torch.equal(flat, torch.cat(list(batch_indices(10, 25, 4, seed=0))))
    # starting later continues the same stream
    assert torch.equal(torch.cat(list(batch_indices(10, 13, 4, seed=0, start=12))), flat[12:])


def test_early_stop_proxy_gives_a_finite_window_ne(setup):
    dm, space = setup
    proxy = EarlyStopProxy(space, dm, batch_size=128, lr=0.01, seed=0)
    arch = space.sample(torch.Generator().manual_seed(0))
    metrics = proxy.evaluate(arch, 2000)
    assert math.isfinite(metrics["ne"]) and 0.5 < metrics["ne"] < 1.5
    assert metrics["flops"] == space.flops(arch)
    # same seed, same examples, same initial draw: the proxy is deterministic
    assert proxy.evaluate(arch, 2000)["ne"] == metrics["ne"]


def test_weight_sharing_proxy_never_writes_into_the_supernet(setup, tmp_path):
    dm, space = setup
    proxy = WeightSharingProxy(
        space,
        dm,
        supernet_path=str(tmp_path / "supernet.pt"),
        pretrain_examples=1500,
        batch_size=128,
        lr=0.01,
        seed=0,
    )
    proxy.prepare()
    on_disk = torch.load(tmp_path / "supernet.pt", weights_only=True)
    before = {k: v.clone() for k, v in proxy.supernet.state_dict().items()}
    assert before.keys() == on_disk.keys()
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        metrics = proxy.evaluate(space.sample(gen), 600)
        assert math.isfinite(metrics["ne"])
    after = proxy.supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(on_disk[k], after[k]) for k in before)
    # pre-training moved the weights away from a fresh supernet's
    torch.manual_seed(0)
    fresh = type(proxy.supernet)(space).state_dict()
    assert any(not torch.equal(fresh[k], after[k]) for k in before)
    # a second prepare() reuses the checkpoint instead of pre-training again
    mtime = (tmp_path / "supernet.pt").stat().st_mtime_ns
    proxy.prepare()
    assert (tmp_path / "supernet.pt").stat().st_mtime_ns == mtime


def test_weight_sharing_proxy_needs_its_checkpoint(setup, tmp_path):
    dm, space = setup
    proxy = WeightSharingProxy(
        space, dm, supernet_path=str(tmp_path / "missing.pt"), pretrain_examples=10
    )
    with pytest.raises(FileNotFoundError, match="method.evaluator.supernet_path"):
        proxy.evaluate(space.sample(torch.Generator().manual_seed(0)), 10)


class _TwoLayer(torch.nn.Module):
    def __init__(self, n_dense):
        super().__init__()
        self.a, self.b = torch.nn.Linear(n_dense, 3), torch.nn.Linear(3, 1)

    def forward(self, dense, sparse):
        return self.b(torch.tanh(self.a(dense))).squeeze(-1)


def test_sigeo_terms_match_a_direct_computation(setup):
    dm, _ = setup
    split = dm.split("train")
    torch.manual_seed(0)
    model = _TwoLayer(split.dense.shape[1])
    batches = [torch.arange(i * 64, (i + 1) * 64) for i in range(4)]
    terms = sigeo_terms(model, split, batches)
    # per-batch gradients by autograd.grad, statistics in numpy (population std)
    grads, losses = [], []
    for idx in batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(split.dense[idx], split.sparse[idx]), split.label[idx]
        )
        grads.append([g.numpy() for g in torch.autograd.grad(loss, list(model.parameters()))])
        losses.append(loss.item())
    names = [n for n, _ in model.named_parameters()]
    modules: dict[str, float] = {}
    inner = 0.0
    for j, (name, p) in enumerate(model.named_parameters()):
        g = np.stack([gb[j] for gb in grads])
        std = g.std(0)
        ok = std > 0
        modules[name.split(".")[0]] = modules.get(name.split(".")[0], 0.0) + float(
            (np.abs(g).mean(0)[ok] / std[ok]).sum()
        )
        inner += float((g.sum(0) * p.detach().numpy()).sum())
    assert len(names) == 4 and set(modules) == {"a", "b"}
    assert terms["zico"] == pytest.approx(sum(math.log(v) for v in modules.values()), rel=1e-4)
    assert terms["fisher_rao"] == pytest.approx(math.log(abs(inner)), rel=1e-4)
    assert terms["loss"] == pytest.approx(np.mean(losses), rel=1e-6)
    with pytest.raises(ValueError, match=">= 2 mini-batches"):
        sigeo_terms(model, split, batches[:1])


def test_sigeo_scores_subnets_with_inherited_weights_and_no_training(setup, tmp_path):
    dm, space = setup
    proxy = SiGeoProxy(
        space,
        dm,
        supernet_path=str(tmp_path / "supernet.pt"),
        pretrain_examples=1000,
        batch_size=128,
        lr=0.01,
        seed=0,
    )
    proxy.prepare()
    before = {k: v.clone() for k, v in proxy.supernet.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    archs = [space.sample(gen) for _ in range(3)]
    scores = [proxy.evaluate(a, 4 * 128) for a in archs]
    for m in scores:
        assert m["ne"] == -m["sigeo"] and m["examples"] == 4 * 128
        assert m["sigeo"] == pytest.approx(m["zico"] + m["fisher_rao"] - m["loss"])
        assert all(math.isfinite(m[k]) for k in ("zico", "fisher_rao", "loss"))
    assert len({m["sigeo"] for m in scores}) == 3  # the architectures are told apart
    assert proxy.evaluate(archs[0], 4 * 128)["sigeo"] == scores[0]["sigeo"]
    after = proxy.supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the coefficients weigh the terms
    loss_only = SiGeoProxy(
        space, dm, supernet_path=str(tmp_path / "supernet.pt"), pretrain_examples=1000,
        batch_size=128, seed=0, zico_weight=0.0, fisher_rao_weight=0.0,
    )  # fmt: skip
    assert loss_only.evaluate(archs[0], 512)["sigeo"] == pytest.approx(-scores[0]["loss"])


def test_sampling_search_end_to_end(tmp_path):
    from hydra import compose, initialize_config_dir

    from rankitect.cli.config import conf_dir
    from rankitect.search.run import search

    overrides = [
        "method=sampling",
        "final=none",
        "search_space=generic",
        "data.source.n_train=3000",
        "data.source.n_val=200",
        "data.source.n_test=200",
        "method.workers=2",
        "method.rounds=2",
        "method.initial_size=6",
        "method.round_size=3",
        "method.proxy_budget=512",
        "method.evaluator.batch_size=128",
        "method.predictor.ensemble=2",
        "method.predictor.epochs=50",
        "method.sampler.steps=10",
        "method.sampler.batch=16",
        "method.halving.top_k=4",
        "method.halving.budgets=[1024,2048]",
        "method.halving.finalists=2",
        "method.poll_s=0.1",
    ]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=overrides)
    results = search(cfg, tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    space = load_space("generic", dm.feature_spec)
    arch = space.arch_from_json((tmp_path / "best_arch.json").read_text())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == "sampling" and saved["arch"] == arch.to_dict() == results["arch"]
    assert saved["flops"] == space.flops(arch)
    # 6 random + 3 predictor proposals at the proxy budget, 4 + 2 in the halving rungs
    assert saved["trials"] == {"done": 15}
    assert [r["scored"] for r in saved["rounds"]] == [6, 3]
    assert [h["evaluated"] for h in saved["halving"]] == [4, 2]
    assert saved["finalists"][0]["arch"] == arch.to_dict()
    pareto = saved["pareto"]
    assert pareto and all(math.isfinite(p["ne"]) for p in pareto)
    assert [p["flops"] for p in pareto] == sorted(p["flops"] for p in pareto)
    assert [p["ne"] for p in pareto] == sorted((p["ne"] for p in pareto), reverse=True)
    curve = [v for _, v in saved["curves"]["best_proxy_ne"]]
    assert len(curve) == 9 and curve == sorted(curve, reverse=True)
    assert min(p["ne"] for p in pareto) == curve[-1]
