"""Non-finite losses and rewards: the step is skipped and counted, the run stops after
``max_nonfinite_in_a_row`` in a row, and no weight, policy logit or theta becomes NaN."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rankitect.data.synthetic import SyntheticCTR
from rankitect.lit import CTRModule, DNASModule
from rankitect.models import DNN
from rankitect.nonfinite import NonFiniteError, NonFiniteGuard
from rankitect.search.oneshot import OneShotRL
from rankitect.space import generic_space

DATA = SyntheticCTR(n_train=512, n_val=64, n_test=16, seed=1)


def loader(batch_size: int = 64) -> DataLoader:
    s = DATA.load().splits["train"]
    return DataLoader(TensorDataset(s.dense, s.sparse, s.label), batch_size=batch_size)


def trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kw,
    )


class NaNAt(nn.Module):
    """Wraps a model: its output is NaN on the calls (0-based) listed in ``bad``."""

    def __init__(self, model: nn.Module, bad: set[int]) -> None:
        super().__init__()
        self.model, self.bad, self.calls = model, bad, 0

    def forward(self, dense, sparse):
        out = self.model(dense, sparse)
        if self.training:
            out = out * float("nan") if self.calls in self.bad else out
            self.calls += 1
        return out


class Snapshots(L.Callback):
    """The module's parameters after every training batch."""

    def __init__(self) -> None:
        self.after: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append([p.detach().clone() for p in pl_module.parameters()])


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---- the guard -----------------------------------------------------------------------------------


def test_guard_counts_resets_on_a_finite_step_and_stops_at_the_limit():
    guard = NonFiniteGuard(3, "loss")
    verdicts = [True, False, False, True, False, False]
    assert [guard.observe(v, step) for step, v in enumerate(verdicts)] == verdicts
    assert (guard.skipped, guard.in_a_row) == (4, 2)
    with pytest.raises(
        NonFiniteError, match=r"non-finite loss on 3 steps in a row .*max_nonfinite_in_a_row=3"
    ):
        guard.observe(False, 6)
    restored = NonFiniteGuard(3, "loss")
    restored.load_state_dict(guard.state_dict())
    assert (restored.skipped, restored.in_a_row) == (5, 3)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_guard_rejects_a_bad_limit_naming_the_key(bad):
    with pytest.raises(ValueError, match="max_nonfinite_in_a_row"):
        NonFiniteGuard(bad, "loss")


# ---- CTRModule ---------------------------------------------------------------------------------


def ctr_module(bad: set[int], limit: int = 10) -> CTRModule:
    torch.manual_seed(0)
    model = NaNAt(DNN(DATA.spec, embedding_dim=4, hidden_units=[8]), bad)
    return CTRModule(model, lr=0.01, lr_plateau_factor=None, max_nonfinite_in_a_row=limit)


def test_ctr_steps_with_a_nan_loss_update_nothing_and_are_counted():
    bad = {2, 3, 6}
    module, snaps = ctr_module(bad), Snapshots()
    trainer(max_steps=8, callbacks=[snaps]).fit(module, loader())
    assert module.nonfinite.skipped == 3 and module.nonfinite.in_a_row == 0
    for step in range(1, 8):
        assert same(snaps.after[step], snaps.after[step - 1]) == (step in bad), step
    # Adam's state advanced on the 5 finite steps only; the step counter saw all 8
    opt = module.trainer.optimizers[0]
    assert {int(s["step"]) for s in opt.state.values()} == {5}
    assert module.trainer.global_step == 8
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert float(module.trainer.callback_metrics["train/nonfinite_skipped"]) == 3


def test_ctr_run_stops_after_too_many_non_finite_losses_in_a_row():
    module = ctr_module(bad={1, 2, 4, 5, 6}, limit=3)
    with pytest.raises(NonFiniteError, match="max_nonfinite_in_a_row=3") as err:
        trainer(max_steps=8).fit(module, loader())
    assert "step 6" in str(err.value)  # 1-2 and 4-5 were two in a row; 4-5-6 is three
    assert all(torch.isfinite(p).all() for p in module.parameters())


# ---- one-shot RL: module losses and rewards ------------------------------------------------------


def rl_search(**options):
    space = generic_space(
        DATA.spec,
        num_choices=2,
        blocks=["linear", "dot_product"],
        distances=[1],
        dims={"linear": [4, 8], "dot_product": [2, 3]},
        embedding_dim=4,
        bottleneck=4,
    )
    baseline = {"_target_": "rankitect.models.DNN", "embedding_dim": 4, "hidden_units": [8]}
    torch.manual_seed(0)
    method = OneShotRL(baseline=baseline, samples_per_update=4, warmup_steps=4, seed=0, **options)
    return method.build(space)


def nan_ne_at(module, bad: set[int]) -> None:
    """The subnet's batch NE is NaN at the training steps in ``bad`` (the loss stays finite)."""
    step = module.training_step

    def training_step(batch, batch_idx):
        out = step(batch, batch_idx)
        if module.global_step in bad:
            out["ne_arch"] = torch.tensor(float("nan"), dtype=torch.float64)
        return out

    module.training_step = training_step


def test_nan_rewards_never_reach_the_policy_or_the_replay_buffer():
    module, (callback,) = rl_search(off_policy_updates=2)
    nan_ne_at(module, bad={5, 9, 10})  # on-policy steps: 4..15
    trainer(max_steps=16, callbacks=[callback]).fit(module, loader())
    assert callback.nonfinite.skipped == 3
    # 12 on-policy samples, 3 dropped: 9 rewards make 2 updates of 4 and 1 pending
    assert callback.learner.updates == 2 and len(callback.pending) == 1
    assert len(callback.learner.buffer) == 8
    assert torch.isfinite(callback.learner.buffer.reward[:8]).all()
    assert torch.isfinite(callback.policy.logits).all()
    assert module.nonfinite.skipped == 0  # the losses were fine


def test_nan_rewards_in_a_row_stop_the_search_naming_the_key():
    module, (callback,) = rl_search(max_nonfinite_in_a_row=2)
    nan_ne_at(module, bad={6, 7})
    with pytest.raises(
        NonFiniteError, match="non-finite reward on 2 steps in a row.*max_nonfinite_in_a_row=2"
    ):
        trainer(max_steps=16, callbacks=[callback]).fit(module, loader())
    assert torch.isfinite(callback.policy.logits).all()


def test_a_nan_supernet_loss_leaves_the_supernet_and_baseline_weights_alone():
    module, callbacks = rl_search()
    snaps = Snapshots()
    forward = module.forward

    def nan_forward(dense, sparse):  # the subnet's logits are NaN on steps 2 and 3
        out = forward(dense, sparse)
        return out * float("nan") if module.global_step in (2, 3) else out

    module.forward = nan_forward
    trainer(max_steps=6, callbacks=[*callbacks, snaps]).fit(module, loader())
    assert module.nonfinite.skipped == 2
    assert same(snaps.after[2], snaps.after[1]) and same(snaps.after[3], snaps.after[2])
    assert not same(snaps.after[4], snaps.after[3])
    assert all(torch.isfinite(p).all() for p in module.parameters())


# ---- DNAS --------------------------------------------------------------------------------------


def test_dnas_steps_with_a_nan_loss_move_neither_weights_nor_theta():
    space = generic_space(
        DATA.spec,
        num_choices=2,
        blocks=["linear", "dot_product"],
        distances=[1],
        dims={"linear": [4, 8], "dot_product": [1, 2]},
        embedding_dim=4,
        bottleneck=4,
    )
    torch.manual_seed(0)
    module = DNASModule(space, arch_lr=0.1, max_nonfinite_in_a_row=3)
    soft_forward = module.soft_forward
    bad = {1, 4, 5}

    def nan_soft_forward(dense, sparse, samples):
        out = soft_forward(dense, sparse, samples)
        return out * float("nan") if module.global_step in bad else out

    module.soft_forward = nan_soft_forward
    snaps = Snapshots()
    trainer(max_steps=7, callbacks=[snaps]).fit(module, loader())
    assert module.nonfinite.skipped == 3
    for step in range(1, 7):
        assert same(snaps.after[step], snaps.after[step - 1]) == (step in bad), step
    assert module.trainer.global_step == 7  # skipped batches still count as steps
    assert torch.isfinite(module.arch.logits).all()
