"""Sampling-based search: the early-stop and weight-sharing proxies, end-to-end search."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rankitect.search.sampling import EarlyStopProxy, WeightSharingProxy
from rankitect.search.sampling.evaluators import batch_indices
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
