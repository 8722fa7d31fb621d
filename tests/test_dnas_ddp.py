"""DNAS under DDP (2 CPU processes, gloo): every rank draws its own Gumbel realisations on
its own data, and the architecture parameters stay identical on every rank."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from rankitect.callbacks import FlopsRegularizer, GumbelTemperature
from rankitect.data.synthetic import SyntheticCTR
from rankitect.lit import DNASModule
from rankitect.space import generic_space


class SaveRankState(Callback):
    """Writes, per rank, the first step's relaxed sample and the final theta and weights."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.first_sample = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_sample is None:
            relaxed = pl_module.relax(trainer.global_step, batch_size=1)
            self.first_sample = torch.cat([s.detach().flatten() for s in relaxed.samples])

    def on_train_end(self, trainer, pl_module):
        state = {
            "sample": self.first_sample,
            "theta": pl_module.arch.logits.detach().clone(),
            "weights": torch.cat([p.detach().flatten() for p in pl_module.supernet.parameters()]),
        }
        torch.save(state, Path(self.out) / f"rank{trainer.global_rank}.pt")


@pytest.mark.timeout(180)
def test_theta_stays_identical_on_every_rank(tmp_path):
    source = SyntheticCTR(
        n_train=512,
        n_val=64,
        n_test=16,
        n_dense=2,
        cardinalities=(10, 12, 8),
        gates=[],
        interactions=[("C1", "C2")],
    )
    data = source.load()
    space = generic_space(
        data.spec,
        num_choices=3,
        blocks=["linear", "dot_product", "pairwise_gating"],
        distances=[1, 2],
        dims={"linear": [4, 8], "dot_product": [1, 2]},
        embedding_dim=4,
        bottleneck=4,
    )
    L.seed_everything(0)
    module = DNASModule(
        space, sampling="example", hard=True, seed=5, arch_lr=0.1, curve_every_n_steps=5
    )
    train = data.splits["train"]
    loader = DataLoader(TensorDataset(train.dense, train.sparse, train.label), batch_size=64)
    callbacks = [
        GumbelTemperature("linear", start=2.0, end=0.5, anneal_steps=6, warmup_steps=1),
        FlopsRegularizer(1500.0, max_realisations=8),
        SaveRankState(str(tmp_path)),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, loader)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # Each rank drew its own realisation (and DistributedSampler gave it its own rows) ...
    assert not torch.allclose(r0["sample"], r1["sample"])
    # ... yet the all-reduced gradients kept theta and the weights identical, and theta moved.
    assert torch.equal(r0["theta"], r1["theta"])
    assert torch.equal(r0["weights"], r1["weights"])
    assert not torch.equal(r0["theta"], DNASModule(space).arch.logits)
    # ddp_spawn hands the search back to the main process: theta, and the curves with it
    assert torch.equal(module.arch.logits.detach(), r0["theta"])
    assert [s for s, _ in module.curves["entropy"]] == [5]
