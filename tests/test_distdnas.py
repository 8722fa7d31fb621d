"""DistDNAS: training shards, the aggregation of the shards' distributions, the cost-aware
loss, and a sharded search run end to end (two shard processes, then resumed)."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rankitect.data import CTRDataModule, SyntheticCTR
from rankitect.search.distdnas import DistDNAS, aggregate
from rankitect.search.reinforce import flops_cost
from rankitect.search.run import search
from rankitect.space import load_space
from rankitect.space.spaces import conf_dir


def test_shards_partition_the_training_rows_and_keep_val_and_test_whole():
    source = SyntheticCTR(n_train=1001, n_val=50, n_test=50, seed=0)
    full = CTRDataModule(source, batch_size=64)
    full.setup()
    parts = []
    for i in range(3):
        dm = CTRDataModule(source, batch_size=64, shard={"index": i, "count": 3})
        dm.setup()
        parts.append(dm.split("train"))
        assert torch.equal(dm.split("val").sparse, full.split("val").sparse)
    assert [len(p) for p in parts] == [333, 334, 334]
    assert torch.equal(torch.cat([p.sparse for p in parts]), full.split("train").sparse)


@pytest.mark.parametrize(
    "shard, message",
    [({"index": 2, "count": 2}, "0 <= index < count"), ({"index": 0}, "data.shard must be")],
)
def test_a_bad_shard_names_the_key(shard, message):
    with pytest.raises(ValueError, match=message):
        CTRDataModule(SyntheticCTR(n_train=10, n_val=10, n_test=10), shard=shard)


class _Decision:
    def __init__(self, name):
        self.name = name


class _Space:
    decisions = [_Decision("block")]


def test_mean_of_probabilities_and_of_logits_can_disagree():
    # option 0 is one shard's favourite and impossible for the other; option 1 suits both
    shards = [{"block": [0.8, 0.2, 0.0]}, {"block": [0.0, 0.4, 0.6]}]
    (by_probs,) = aggregate(_Space(), shards, "probs")
    (by_logits,) = aggregate(_Space(), shards, "logits")
    torch.testing.assert_close(by_probs, torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64))
    assert by_probs.argmax() == 0 and by_logits.argmax() == 1
    assert by_logits.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no decision 'block'"):
        aggregate(_Space(), [{"other": [1.0]}], "probs")


@pytest.mark.parametrize("how", ["probs", "logits"])
def test_the_aggregate_of_identical_shards_is_each_shards_distribution(how):
    shard = {"block": [0.5, 0.3, 0.2]}
    (agg,) = aggregate(_Space(), [shard, shard, shard], how)
    torch.testing.assert_close(agg, torch.tensor(shard["block"], dtype=torch.float64))


def test_more_shards_than_rows_is_refused_naming_the_key():
    dm = CTRDataModule(SyntheticCTR(n_train=3, n_val=10, n_test=10), shard={"index": 0, "count": 4})
    with pytest.raises(ValueError, match=r"data.shard.count=4 is above the 3 rows"):
        dm.setup()


def test_the_cost_aware_loss_charges_every_flop():
    flops = torch.tensor([50.0, 100.0, 200.0])
    assert flops_cost(flops, 100.0, "linear").tolist() == [0.5, 1.0, 2.0]
    assert flops_cost(flops, 100.0, "relu").tolist() == [0.0, 0.0, 1.0]


@pytest.mark.slow
def test_a_sharded_search_runs_its_shards_aggregates_and_resumes(tmp_path):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(
            "search",
            overrides=[
                "method=distdnas",
                "data.source.n_train=1200",
                "data.source.n_val=300",
                "data.source.n_test=300",
                "trainer.max_steps=3",
                "trainer.val_check_interval=3",
                "method.temperature.warmup_steps=0",
                "method.threads=1",
                "final=none",
                "logger=none",
            ],
        )
    results = search(cfg, tmp_path)
    shards = [
        json.loads((tmp_path / "shards" / str(i) / "results.json").read_text()) for i in (0, 1)
    ]
    # each shard searched its own half of the training rows, with the cost-aware loss
    for i, shard in enumerate(shards):
        assert shard["config"]["data"]["shard"] == {"index": i, "count": 2}
        assert shard["config"]["method"]["cost"] == "linear" and shard["steps"] == 3
        assert "final" not in shard
    assert results["method"] == "distdnas" and results["aggregate"] == "probs"
    assert [s["flops"] for s in results["shards"]] == [s["flops"] for s in shards]
    assert results["target_flops"] == shards[0]["target_flops"]
    # the found architecture is the mode of the mean of the shards' probabilities
    dm = instantiate(cfg.data)
    dm.setup()
    space = load_space(OmegaConf.to_container(cfg.search_space), dm.feature_spec)
    best = []
    for d in space.decisions:
        a, b = (s["decision_probs"][d.name] for s in shards)
        mean = [(x + y) / 2 for x, y in zip(a, b, strict=True)]
        best.append(mean.index(max(mean)))
    assert results["arch"] == space.decode(best).to_dict()
    # finished shards are read back, not run again
    stamp = [(tmp_path / "shards" / str(i) / "results.json").stat().st_mtime for i in (0, 1)]
    again = search(cfg, tmp_path)
    assert again["arch"] == results["arch"]
    assert stamp == [
        (tmp_path / "shards" / str(i) / "results.json").stat().st_mtime for i in (0, 1)
    ]


def test_bad_settings_are_refused_before_any_shard_starts():
    with pytest.raises(ValueError, match="method.aggregate"):
        DistDNAS(aggregate="median")
    with pytest.raises(ValueError, match="method.shards"):
        DistDNAS(shards=0)
