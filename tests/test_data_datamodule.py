"""CTRDataModule: batch layout, seeded shuffling, Lightning integration, and the Hydra configs."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from rankitect.data import (
    BatchIndexSampler,
    CategoricalCSVReader,
    CriteoReader,
    CTRDataModule,
    FeatureSpec,
    SyntheticCTR,
)

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("RANKITECT_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # intra-op threads only add contention on a small shared machine for these tiny batches
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _synthetic_dm(**kw):
    gen = SyntheticCTR(n_train=1000, n_val=300, n_test=200, n_dense=3, seed=0)
    dm = CTRDataModule(gen, **{"batch_size": 128, **kw})
    dm.setup("fit")
    return dm


def test_batches_have_the_documented_layout():
    dm = _synthetic_dm(eval_batch_size=256)
    train = list(dm.train_dataloader())
    assert [len(b[2]) for b in train] == [128] * 7 + [1000 - 7 * 128]
    dense, sparse, label = train[0]
    assert dense.shape == (128, 3) and dense.dtype == torch.float32
    assert sparse.shape == (128, 8) and sparse.dtype == torch.int64
    assert label.shape == (128,) and label.dtype == torch.float32
    assert all(t.is_contiguous() for t in train[0])
    assert [len(b[2]) for b in dm.val_dataloader()] == [256, 44]
    assert isinstance(dm.feature_spec, FeatureSpec) and dm.feature_spec.n_dense == 3


def test_no_dense_features_gives_empty_dense_tensors(tmp_path):
    for f in ("train.csv", "valid.csv", "test.csv"):
        (tmp_path / f).write_text("label,a,b\n1,x,y\n0,z,y\n1,x,w\n")
    dm = CTRDataModule(CategoricalCSVReader(root=tmp_path), batch_size=2, cache=False)
    dm.setup("fit")
    dense, sparse, _ = next(iter(dm.train_dataloader()))
    assert dense.shape == (2, 0) and dense.dtype == torch.float32 and sparse.shape == (2, 2)


def _train_order(dm, epoch):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return torch.cat([b[0][:, 0] for b in loader])  # continuous dense values identify rows


def test_training_shuffle_is_seeded_and_changes_per_epoch():
    dm = _synthetic_dm(seed=5)
    order = _train_order(dm, 0)
    assert torch.equal(order, _train_order(_synthetic_dm(seed=5), 0))  # reproducible
    assert not torch.equal(order, _train_order(_synthetic_dm(seed=6), 0))  # other seed
    assert not torch.equal(order, _train_order(dm, 1))  # next epoch
    rows = dm.split("train").dense[:, 0]
    assert not torch.equal(order, rows)  # shuffled...
    assert torch.equal(order.sort().values, rows.sort().values)  # ...each row exactly once
    assert torch.equal(_train_order(_synthetic_dm(shuffle=False), 0), rows)


def test_sampler_advances_epochs_without_set_epoch():
    sampler = BatchIndexSampler(50, 10, shuffle=True, seed=1)
    first, second = torch.cat(list(sampler)), torch.cat(list(sampler))
    assert not torch.equal(first, second)
    sampler.set_epoch(0)
    assert torch.equal(torch.cat(list(sampler)), first)
    assert len(BatchIndexSampler(50, 16, False, drop_last=True)) == 3
    assert [len(b) for b in BatchIndexSampler(50, 16, False, drop_last=True)] == [16, 16, 16]


def test_eval_order_is_the_split_order_and_workers_give_the_same_batches():
    dm = _synthetic_dm(eval_batch_size=64)
    val = dm.split("val")
    labels = torch.cat([b[2] for b in dm.val_dataloader()])
    assert torch.equal(labels, val.label)
    with_worker = _synthetic_dm(eval_batch_size=64, num_workers=1)
    for x, y in zip(dm.test_dataloader(), with_worker.test_dataloader(), strict=True):
        assert all(torch.equal(p, q) for p, q in zip(x, y, strict=True))


def test_errors_before_setup_and_for_real_data():
    dm = CTRDataModule(SyntheticCTR(n_train=10, n_val=10, n_test=10))
    with pytest.raises(RuntimeError, match="setup"):
        _ = dm.feature_spec
    dm.setup()
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        dm.split("valid")
    with pytest.raises(TypeError, match="fingerprint"):
        CTRDataModule(source="not a source")
    with pytest.raises(ValueError, match="on_bad_row"):
        CTRDataModule(SyntheticCTR(), on_bad_row="warn")


class _TinyModel(L.LightningModule):
    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.emb = torch.nn.ModuleList(torch.nn.Embedding(c, 1) for c in spec.sparse_cardinalities)
        self.dense = torch.nn.Linear(spec.n_dense, 1)
        self.seen: dict[int, list[torch.Tensor]] = {}
        self.validated = self.tested = 0

    def _logit(self, dense, sparse):
        first_order = sum(e(sparse[:, j]).squeeze(1) for j, e in enumerate(self.emb))
        return self.dense(dense).squeeze(1) + first_order

    def training_step(self, batch, _):
        dense, sparse, label = batch
        self.seen.setdefault(self.current_epoch, []).append(dense[:, 0])
        return torch.nn.functional.binary_cross_entropy_with_logits(
            self._logit(dense, sparse), label
        )

    def validation_step(self, batch, _):
        self.validated += len(batch[2])

    def test_step(self, batch, _):
        self.tested += len(batch[2])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_and_test_the_way_the_cli_does():
    dm = CTRDataModule(SyntheticCTR(n_train=600, n_val=100, n_test=150, seed=2), batch_size=100)
    dm.prepare_data()
    dm.setup("fit")
    model = _TinyModel(dm.feature_spec)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    e0, e1 = torch.cat(model.seen[0]), torch.cat(model.seen[1])
    assert len(e0) == len(e1) == 600
    assert torch.equal(e0.sort().values, e1.sort().values)  # every row once per epoch
    assert not torch.equal(e0, e1)  # reshuffled between epochs
    assert model.validated == 2 * 100 and model.tested == 150


# --------------------------------------------------------------------------- Hydra configs


def _config(name, **overrides):
    cfg = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    # a data config's ${paths.data_dir} is of the composed config (conf/paths/default.yaml)
    paths = OmegaConf.load(REPO / "conf" / "paths" / "default.yaml")
    return OmegaConf.create({"paths": paths, "data": cfg}).data


def test_synthetic_config_instantiates_a_datamodule():
    cfg = _config("synthetic", **{"source.n_train": 500, "source.n_val": 50, "source.n_test": 50})
    dm = hydra.utils.instantiate(cfg)
    assert isinstance(dm, CTRDataModule) and isinstance(dm.source, SyntheticCTR)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.source.planted_interactions == (("C1", "C2"), ("C3", "C4"))
    assert dm.feature_spec.n_dense == 4 and dm.feature_spec.n_sparse == 8
    assert dm.batch_size == 1024 and 0 < dm.bayes_ne("val") < 1


@pytest.mark.skipif(not (DATA_ROOT / "frappe_x1").is_dir(), reason=f"no frappe_x1 in {DATA_ROOT}")
def test_frappe_config(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKITECT_DATA_ROOT", str(DATA_ROOT))
    monkeypatch.setenv("RANKITECT_CACHE", str(tmp_path))
    cfg = _config("frappe", on_bad_row="skip")
    assert cfg.batch_size == 4096 and cfg.source.root == f"{DATA_ROOT}/frappe_x1"
    dm = hydra.utils.instantiate(cfg)
    assert isinstance(dm.source, CategoricalCSVReader) and dm.on_bad_row == "skip"
    assert dm.cache.root == tmp_path
    dm.prepare_data()
    dm.setup("fit")
    assert dm.feature_spec.n_sparse == 10 and len(dm.split("test")) == 28860
    assert len(os.listdir(tmp_path)) == 1


@pytest.mark.skipif(not (DATA_ROOT / "criteo_sample").is_dir(), reason=f"no sample in {DATA_ROOT}")
def test_criteo_config(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKITECT_DATA_ROOT", str(DATA_ROOT))
    dm = hydra.utils.instantiate(_config("criteo", cache=False, **{"source.encoding": "hash"}))
    assert isinstance(dm.source, CriteoReader) and dm.source.encoding == "hash"
    dm.setup("fit")
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [160, 20, 20]
    assert dm.feature_spec.sparse_cardinalities == (1_000_001,) * 26
