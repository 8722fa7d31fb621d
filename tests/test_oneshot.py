"""One-shot RL search: reward, module, callback, resume, ablation modes, what the policy learns."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from rankitect.callbacks import RLSearchCallback
from rankitect.data.datamodule import CTRDataModule
from rankitect.data.synthetic import SyntheticCTR
from rankitect.lit import SupernetModule
from rankitect.lit.supernet_module import build_baseline
from rankitect.search.oneshot import OneShotRL
from rankitect.search.policy import CategoricalPolicy
from rankitect.search.reinforce import off_policy_loss, search_reward
from rankitect.space import generic_space

TINY_DNN = {
    "_target_": "rankitect.models.DNN",
    "_partial_": True,
    "embedding_dim": 4,
    "hidden_units": [8],
    "dropout": 0.3,  # draws from the global RNG, which a resume must restore
}


@pytest.fixture(autouse=True)
def one_thread():
    # Two intra-op threads on a busy 2-core machine are many times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def datamodule(n_train=1024, batch_size=64, seed=1, **source) -> CTRDataModule:
    options = {
        "n_dense": 2,
        "cardinalities": (6, 7, 8),
        "interactions": [("C1", "C2")],
        "gates": [("I1", "C3")],
        **source,
    }
    src = SyntheticCTR(n_train=n_train, n_val=128, n_test=128, seed=seed, **options)
    dm = CTRDataModule(src, batch_size=batch_size, cache=False)
    dm.setup("fit")
    return dm


def mixed_space(spec):
    return generic_space(
        spec,
        num_choices=2,
        blocks=["linear", "dot_product", "pairwise_sum"],
        distances=[1],
        dims={"linear": [4, 8], "dot_product": [2, 3]},
        embedding_dim=4,
        bottleneck=4,
    )


def fit(module, callbacks, dm, ckpt_path=None, **trainer):
    options = {"max_epochs": 1, "limit_val_batches": 1, "enable_checkpointing": False, **trainer}
    t = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **options,
    )
    t.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return t


# ---- reward and configuration ------------------------------------------------------------------


def test_reward_on_a_hand_worked_example():
    ne_a, ne_b = torch.tensor(0.9), torch.tensor(0.8)
    # NE% = (0.9 - 0.8) / 0.8 = 0.125; FLOPs 150 vs target 100: |150 - 100| / 100 = 0.5
    over, under = torch.tensor(150.0), torch.tensor(50.0)
    kw = {"alpha": 0.2, "target": 100.0}
    assert float(search_reward(ne_a, ne_b, over, **kw, cost="l1")) == pytest.approx(0.225)
    assert float(search_reward(ne_a, ne_b, over, **kw, cost="relu")) == pytest.approx(0.225)
    assert float(search_reward(ne_a, ne_b, under, **kw, cost="l1")) == pytest.approx(0.225)
    assert float(search_reward(ne_a, ne_b, under, **kw, cost="relu")) == pytest.approx(0.125)
    assert float(search_reward(ne_a, None, over, kind="absolute", **kw)) == pytest.approx(1.0)
    assert float(search_reward(ne_a, ne_b, over, alpha=0.0)) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="baseline"):
        search_reward(ne_a, None, over)


def test_off_policy_update_leaves_a_decision_shared_by_every_sample_alone():
    """Weighted importance sampling needs the weighted mean reward as baseline: the weighted
    advantages then sum to zero, so a decision on which all replayed samples agree carries
    no information and must get no gradient."""
    spec = datamodule(n_train=64).feature_spec
    space = mixed_space(spec)
    policy = CategoricalPolicy(space).double()
    with torch.no_grad():
        policy.logits.normal_(generator=torch.Generator().manual_seed(0))
    values = policy.sample(16, torch.Generator().manual_seed(1))
    values[:, 0] = 1  # every sample picks block 1 in Choice 0
    behaviour = policy.log_prob(values).detach() + torch.linspace(-2.0, 2.0, 16).double()
    rewards = torch.linspace(0.0, 1.0, 16).double()
    off_policy_loss(policy.log_prob(values), behaviour, rewards).backward()
    assert policy.logits.grad[0].abs().max() < 1e-12
    assert policy.logits.grad[1:].abs().max() > 1e-3


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"cost": "l2"}, "cost"),
        ({"reward": "ne"}, "reward"),
        ({"warmup_mode": "half"}, "warmup_mode"),
        ({"warmup_steps": 1.5}, "warmup_steps"),
        ({"warmup_steps": -3}, "warmup_steps"),
        ({"samples_per_update": 1}, "samples_per_update"),
        ({"policy_optimizer": "lbfgs"}, "policy_optimizer"),
        ({"policy_init": "zeros"}, "policy_init"),
        ({"off_policy_updates": -1}, "off_policy_updates"),
        ({"target_flops": -5.0}, "target_flops"),
        ({"alpha": 1.0}, "target_flops"),  # null target = seed FLOPs, but no seed here
        ({"baseline": "nonsense"}, "baseline"),
        ({"baseline": "missing.json"}, "baseline"),
        ({"baseline": "seed"}, "baseline"),  # this space has no seed
        ({"lr": 0.0}, "lr"),
    ],
)
def test_bad_config_names_its_key(options, key):
    spec = datamodule(n_train=64).feature_spec
    with pytest.raises(ValueError, match=key):
        OneShotRL(**{"baseline": TINY_DNN, **options}).build(mixed_space(spec))


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="polcy_lr"):
        OneShotRL(polcy_lr=0.1)


def test_baselines_from_arch_json_and_model_config(tmp_path):
    spec = datamodule(n_train=64).feature_spec
    space = mixed_space(spec)
    arch = space.sample(torch.Generator().manual_seed(0))
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json())
    model = build_baseline(space, str(path))
    assert model.arch == arch
    assert type(build_baseline(space, TINY_DNN)).__name__ == "DNN"
    assert type(build_baseline(space, "dlrm")).__name__ == "DLRM"
    assert build_baseline(space, None) is None


# ---- training ---------------------------------------------------------------------------------


def test_each_step_trains_the_sampled_subnet_and_the_baseline():
    dm = datamodule(n_train=256)
    space = mixed_space(dm.feature_spec)
    module, callbacks = OneShotRL(
        baseline=TINY_DNN, samples_per_update=2, warmup_steps=0, seed=0
    ).build(space)
    assert isinstance(module, SupernetModule) and isinstance(callbacks[0], RLSearchCallback)
    trained = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trained.append((pl_module.arch, outputs["ne_arch"], outputs["ne_baseline"]))

    before = {k: v.clone() for k, v in module.state_dict().items() if k.startswith("baseline.")}
    fit(module, [*callbacks, Spy()], dm)
    assert len(trained) == 4 and all(a is not None for a, _, _ in trained)
    assert len({a for a, _, _ in trained}) > 1  # a fresh draw each step
    assert all(torch.isfinite(ne) and torch.isfinite(b) for _, ne, b in trained)
    after = module.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
    assert callbacks[0].learner.updates == 2
    assert set(module.search_record) >= {"logits", "curves"}


def test_warmup_freezes_the_policy_and_trains_the_whole_supernet():
    dm = datamodule(n_train=256)
    space = mixed_space(dm.feature_spec)
    method = OneShotRL(
        baseline=TINY_DNN, samples_per_update=2, warmup_steps=3, warmup_mode="supernet"
    )
    module, callbacks = method.build(space)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((pl_module.arch, callbacks[0].policy.logits.detach().clone()))

    start = callbacks[0].policy.logits.detach().clone()
    fit(module, [*callbacks, Spy()], dm, max_epochs=2, max_steps=5)
    assert [a is None for a, _ in seen] == [True, True, True, False, False]
    assert all(torch.equal(logits, start) for _, logits in seen[:4])
    assert not torch.equal(seen[4][1], start)  # the first update, after two policy samples
    assert callbacks[0].learner.updates == 1


@pytest.mark.parametrize(
    "options",
    [
        {"reward": "absolute", "baseline": None},  # appendix A: NE_batch reward, no baseline
        {"off_policy_updates": 0},  # on-policy REINFORCE only
    ],
)
def test_ablation_modes_run_and_update_the_policy(options):
    dm = datamodule(n_train=512)
    space = mixed_space(dm.feature_spec)
    method = OneShotRL(
        **{"baseline": TINY_DNN, "samples_per_update": 4, "warmup_steps": 0, **options}
    )
    module, callbacks = method.build(space)
    start = callbacks[0].policy.logits.detach().clone()
    fit(module, callbacks, dm)
    assert (module.baseline is None) == (options.get("baseline", "x") is None)
    assert callbacks[0].learner.updates == 2
    assert not torch.equal(callbacks[0].policy.logits, start)
    off = callbacks[0].learner.off_policy_updates
    assert off == options.get("off_policy_updates", 4)
    outcome = method.outcome(module, callbacks)
    space.validate(outcome.arch)
    assert len(outcome.curves["reward"]) == 2
    assert bool(outcome.curves["ne_pct"]) == (options.get("reward") != "absolute")


def test_relative_reward_without_a_baseline_is_refused():
    dm = datamodule(n_train=64)
    module, callbacks = OneShotRL(baseline=None).build(mixed_space(dm.feature_spec))
    with pytest.raises(ValueError, match="baseline"):
        fit(module, callbacks, dm)


# ---- resume -----------------------------------------------------------------------------------


def resumable_search(dm):
    L.seed_everything(0)
    method = OneShotRL(
        baseline=TINY_DNN,
        samples_per_update=4,
        off_policy_updates=2,
        warmup_steps=4,
        policy_lr=0.1,
        seed=3,
    )
    return method.build(mixed_space(dm.feature_spec))


def test_resumed_search_ends_where_an_uninterrupted_one_does(tmp_path):
    """Killed after the first epoch, resumed by a fresh trainer, module and callback."""
    dm = datamodule()  # 16 steps per epoch
    module, callbacks = resumable_search(dm)
    fit(module, callbacks, dm, max_epochs=3)
    uninterrupted = callbacks[0].policy.logits.detach().clone()

    module, callbacks = resumable_search(dm)
    t = fit(module, callbacks, dm, max_epochs=1)
    t.save_checkpoint(tmp_path / "epoch1.ckpt")
    torch.manual_seed(1234)  # a new process has another global RNG state
    module, callbacks = resumable_search(datamodule())
    fit(module, callbacks, datamodule(), max_epochs=3, ckpt_path=tmp_path / "epoch1.ckpt")

    assert callbacks[0].learner.updates == 11  # (48 - 4 warm-up steps) / 4 samples
    assert torch.equal(callbacks[0].policy.logits, uninterrupted)
    record = module.search_record
    assert len(record["curves"]["reward"]) == 11  # curves from before the kill kept


# ---- what the policy learns ---------------------------------------------------------------------


def linear_space(spec):
    """One linear Choice: its FLOPs are set by the width decision (and, less, the inputs)."""
    return generic_space(
        spec,
        num_choices=1,
        blocks=["linear"],
        distances=[1],
        dims={"linear": [2, 4, 8, 16, 32, 64]},
        embedding_dim=4,
        bottleneck=4,
    )


@pytest.mark.parametrize("start", ["low", "high"])
def test_flops_cost_moves_the_most_likely_arch_to_the_target(start):
    # Sparse features only: the Choice's one candidate input is always read, so the FLOPs
    # depend on the width alone and the target is met by exactly one width.
    dm = datamodule(n_train=8192, n_dense=0, gates=[])
    space = linear_space(dm.feature_spec)
    (dim,) = [i for i, d in enumerate(space.decisions) if d.kind == "dim"]
    widths = torch.zeros(6, space.num_decisions, dtype=torch.long)
    widths[:, dim] = torch.arange(6)
    flops = [space.flops(space.decode(v)) for v in widths]
    target = flops[3]  # width 16; its neighbours are 2x away
    L.seed_everything(0)
    method = OneShotRL(
        baseline=TINY_DNN,
        target_flops=target,
        alpha=5.0,
        cost="l1",
        samples_per_update=4,
        off_policy_updates=4,
        policy_lr=0.05,
        warmup_steps=0,
    )
    module, callbacks = method.build(space)
    policy = callbacks[0].policy
    with torch.no_grad():  # start far from the target: at the narrowest or the widest layer
        policy.logits[dim] = 0.0
        policy.logits[dim, 0 if start == "low" else 5] = 3.0
    start_flops = space.flops(policy.most_likely())
    assert start_flops == (flops[0] if start == "low" else flops[5])
    fit(module, callbacks, dm)
    found = space.flops(method.outcome(module, callbacks).arch)
    assert abs(found - target) / target < 0.1, (start_flops, found, target)


def test_reward_drives_the_block_choice_to_one_expressing_the_planted_interaction():
    """The label depends on the product of two fields' latent vectors only. A dot product of
    embeddings expresses it directly; a 2-wide linear layer over the flattened embeddings
    cannot. With alpha = 0 only the NE% reward can tell them apart.

    One-shot RL can lock onto whichever block happens to be ahead early (about 1 seed in
    10 here), so three seeded searches must all find the dot product; a policy that ignored
    the reward would pass by chance one time in eight.

    The blocks use PyTorch's initialisation: under the default xavier init the EmbedFC bias
    starts at zero, so a dot product of 1e-4 embeddings starts quadratically small and on this
    8k-row problem the reward told the blocks apart in 2 of 5 seeds (5 of 5 with torch init);
    docs/space.md, "Layer settings".
    """
    dm = datamodule(
        n_train=8192,
        n_dense=0,
        gates=[],
        first_order_scale=0.0,
        interaction_scale=3.0,
    )
    space = generic_space(
        dm.feature_spec,
        num_choices=1,
        blocks=["linear", "dot_product"],
        distances=[1],
        dims={"linear": [2], "dot_product": [2]},
        embedding_dim=4,
        bottleneck=4,
        layer={"init": "torch"},
    )
    found = []
    for seed in range(3):
        L.seed_everything(seed)
        method = OneShotRL(
            baseline=TINY_DNN,
            alpha=0.0,
            samples_per_update=4,
            off_policy_updates=4,
            policy_lr=0.05,
            warmup_steps=0.25,
            seed=seed,
        )
        module, callbacks = method.build(space)
        fit(module, callbacks, dm)
        outcome = method.outcome(module, callbacks)
        found.append((outcome.arch.choices[0].block, float(outcome.probs[0][1])))
    assert all(block == "dot_product" and p > 0.9 for block, p in found), found
