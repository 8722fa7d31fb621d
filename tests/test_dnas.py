"""DNAS: Gumbel-softmax relaxation, temperature schedules, the FLOPs regulariser, the search
itself (block selection on planted data, resume) and the `method=dnas` entry point."""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from rankitect.callbacks import FlopsRegularizer, GumbelTemperature
from rankitect.data.synthetic import SyntheticCTR
from rankitect.lit import DNASModule
from rankitect.lit.dnas_module import Relaxation
from rankitect.search.dnas import DNAS
from rankitect.search.gumbel import gumbel_softmax, split_decisions
from rankitect.space import ChoiceSpec, SearchSpace, generic_space

# ---- fixtures --------------------------------------------------------------------------------


def small_data(seed: int = 0, n_train: int = 1024) -> SyntheticCTR:
    return SyntheticCTR(
        n_train=n_train,
        n_val=256,
        n_test=16,
        n_dense=2,
        cardinalities=(10, 12, 8),
        interactions=[("C1", "C2")],
        gates=[],
        seed=seed,
    )


def small_space(spec) -> SearchSpace:
    """Three Choices with linear, dot-product and pairwise-gating blocks, two dims each."""
    return generic_space(
        spec,
        num_choices=3,
        blocks=["linear", "dot_product", "pairwise_gating"],
        distances=[1, 2],
        dims={"linear": [4, 8], "dot_product": [1, 2]},
        embedding_dim=4,
        bottleneck=4,
    )


def loader(split, batch_size: int = 128) -> DataLoader:
    return DataLoader(TensorDataset(split.dense, split.sparse, split.label), batch_size=batch_size)


def trainer(**kw) -> L.Trainer:
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


# ---- Gumbel-softmax --------------------------------------------------------------------------


def padded(space: SearchSpace, logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(v) for v in logits)
    out = torch.zeros(len(logits), width)
    valid = torch.zeros(len(logits), width, dtype=torch.bool)
    for i, v in enumerate(logits):
        out[i, : len(v)] = v
        valid[i, : len(v)] = True
    return out, valid


def test_gumbel_samples_are_distributions_and_hard_ones_are_one_hot_with_soft_gradients():
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.5, 0.0]], requires_grad=True)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    gen = torch.Generator().manual_seed(0)
    soft = gumbel_softmax(logits, valid, 0.7, gen, num_samples=5)
    assert soft.shape == (5, 2, 3)
    assert torch.allclose(soft.sum(-1), torch.ones(5, 2))
    assert (soft[:, 1, 2] == 0).all() and (soft[:, :, :2] > 0).all()
    hard = gumbel_softmax(logits, valid, 0.7, torch.Generator().manual_seed(0), 5, hard=True)
    assert set(hard.detach().unique().tolist()) == {0.0, 1.0}
    assert (hard.detach().sum(-1) == 1).all()
    # Same noise: the hard sample is the soft sample's argmax, and carries its gradient.
    assert torch.equal(hard.detach().argmax(-1), soft.detach().argmax(-1))
    weights = torch.randn(5, 2, 3)
    (g_soft,) = torch.autograd.grad((soft * weights).sum(), logits)
    (g_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    assert torch.allclose(g_soft, g_hard)
    parts = split_decisions(soft, [3, 2])
    assert [tuple(p.shape) for p in parts] == [(5, 3), (5, 2)]


def test_gumbel_argmax_frequencies_follow_the_softmax():
    # The Gumbel-max trick: argmax(theta + g) ~ Categorical(softmax(theta)), at any temperature.
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    n = 20_000
    samples = gumbel_softmax(logits, valid, 3.0, torch.Generator().manual_seed(1), n, hard=True)
    freq = samples.sum(0)[0] / n
    assert torch.allclose(freq, torch.softmax(logits[0], 0), atol=0.015)


def test_gumbel_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        gumbel_softmax(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), 0.0, None)


# ---- temperature schedule --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # start 4, end 0.25, 10 warm-up steps, 20 annealing steps; by hand:
        # exponential: 4 * (1/16) ** s -> s = 1/2: 1.0, s = 3/4: 4 * 2 ** -3 = 0.5
        ("exponential", {0: 4.0, 9: 4.0, 10: 4.0, 20: 1.0, 25: 0.5, 30: 0.25, 99: 0.25}),
        # linear: 4 - 3.75 * s -> s = 1/2: 2.125, s = 3/4: 1.1875
        ("linear", {0: 4.0, 9: 4.0, 10: 4.0, 20: 2.125, 25: 1.1875, 30: 0.25, 99: 0.25}),
    ],
)
def test_temperature_schedules_hit_hand_computed_values(schedule, expected):
    cb = GumbelTemperature(schedule, start=4.0, end=0.25, anneal_steps=20, warmup_steps=10)
    for step, value in expected.items():
        assert cb.temperature(step) == pytest.approx(value, rel=1e-12), step
    assert cb.in_warmup(9) and not cb.in_warmup(10)


class Recorder(Callback):
    """Records, per step, the temperature and frozen flag the module trains with and theta."""

    def __init__(self) -> None:
        self.temperature, self.frozen, self.theta = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.temperature.append(pl_module.temperature)
        self.frozen.append(pl_module.theta_frozen)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.theta.append(pl_module.arch.logits.detach().clone())


def test_a_fit_trains_with_the_schedule_and_freezes_theta_during_warmup():
    L.seed_everything(0)
    data = small_data(n_train=512).load()
    module = DNASModule(small_space(data.spec), seed=0)
    # 512 rows / 128 = 4 steps per epoch, 3 epochs: warm-up is 0.25 of 12 = 3 steps and the
    # annealing (anneal_steps null) ends on the last step, 11 = 3 + 8.
    temp = GumbelTemperature("linear", start=2.0, end=0.2, warmup_steps=0.25)
    rec = Recorder()
    theta0 = module.arch.logits.detach().clone()
    trainer(max_epochs=3, limit_val_batches=0, callbacks=[temp, rec]).fit(
        module, loader(data.splits["train"])
    )
    assert temp.warmup_steps == 3 and temp.anneal_steps == 8
    expected = [2.0] * 4 + [2.0 - 1.8 * (t - 3) / 8 for t in range(4, 12)]
    assert rec.temperature == pytest.approx(expected, rel=1e-12)
    assert rec.frozen == [True] * 3 + [False] * 9
    for t in range(3):
        assert torch.equal(rec.theta[t], theta0)
    assert not torch.equal(rec.theta[3], theta0)
    # one Lightning step per batch although two optimisers step in joint mode
    assert module.global_step == 12


def test_temperature_state_survives_a_checkpoint():
    cb = GumbelTemperature(warmup_steps=0.5)
    cb.anneal_steps, cb.warmup_steps, cb.current = 7, 3, 1.5
    other = GumbelTemperature(warmup_steps=0.5)
    other.load_state_dict(cb.state_dict())
    assert (other.anneal_steps, other.warmup_steps, other.current) == (7, 3, 1.5)


# ---- FLOPs regulariser -----------------------------------------------------------------------


def test_sampled_estimate_is_the_exact_flops_of_one_hot_realisations():
    spec = small_data().spec
    space = small_space(spec)
    module = DNASModule(space)
    gen = torch.Generator().manual_seed(3)
    values = torch.stack([space.sample_values(gen) for _ in range(6)])
    samples = [torch.stack(w) for w in zip(*(space.one_hot(v) for v in values), strict=True)]
    reg = FlopsRegularizer(1000.0, max_realisations=6)
    flops = reg.flops(module, Relaxation(samples, module.arch.probs()))
    exact = [space.flops(space.decode(v)) for v in values]
    assert flops.tolist() == pytest.approx(exact, rel=1e-6)
    # Eq. 9 with c = 1000, normalised by c
    loss = reg.loss(module, Relaxation(samples, module.arch.probs()))
    assert float(loss) == pytest.approx(sum(abs(f - 1000) / 1000 for f in exact) / 6, rel=1e-5)


@pytest.mark.parametrize(
    ("estimator", "hard", "sampling"),
    [("sampled", True, "example"), ("sampled", False, "batch"), ("expected", False, "batch")],
)
@pytest.mark.parametrize("side", ["above", "below"])
def test_regulariser_gradient_moves_expected_flops_to_the_target(estimator, hard, sampling, side):
    space = small_space(small_data().spec)
    module = DNASModule(space, hard=hard, sampling=sampling, temperature=0.5, init="uniform")
    start = module.expected_flops()
    # E[FLOPs] starts above (below) a target of 0.6x (1.5x) itself; the space spans ~20x.
    target = start * (0.6 if side == "above" else 1.5)
    reg = FlopsRegularizer(target, estimator=estimator, max_realisations=32)
    opt = torch.optim.Adam([module.arch.logits], lr=0.05)

    def descend(steps: range) -> float:
        for step in steps:
            opt.zero_grad()
            reg.loss(module, module.relax(step, batch_size=32)).backward()
            opt.step()
        return module.expected_flops()

    early = descend(range(3))
    assert (early < start) if side == "above" else (early > start)
    # The sampled estimates settle near, not at, E[FLOPs] = c: E|F - c| is minimal when the
    # realisations concentrate around c, and soft samples are a surrogate of the FLOPs.
    assert descend(range(3, 60)) == pytest.approx(target, rel=0.2)
    if estimator == "expected":  # |E[FLOPs] - c| is minimal exactly at E[FLOPs] = c
        assert descend(range(60, 150)) == pytest.approx(target, rel=0.05)


def test_regulariser_target_null_is_the_seed_architectures_flops():
    from rankitect.space import load_space

    spec = SyntheticCTR(n_train=8, n_val=8, n_test=8).spec
    space = load_space("rankitect", spec)
    module = DNASModule(space)
    reg = FlopsRegularizer(None)
    reg.on_fit_start(None, module)
    assert reg.target_flops == space.flops(space.seed_arch())
    assert module.regularisers == [reg]
    reg.on_fit_start(None, module)  # a second fit does not register it twice
    assert module.regularisers == [reg]


# ---- activation checkpointing ----------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["batch", "example"])
def test_checkpointed_soft_forward_has_the_plain_values_and_gradients(sampling):
    data = small_data(n_train=64).load()
    train = data.splits["train"]
    space = small_space(data.spec)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        module = DNASModule(space, sampling=sampling, activation_checkpointing=ckpt)
        relaxation = module.relax(step=3, batch_size=64)
        logits = module.soft_forward(train.dense, train.sparse, relaxation.samples)
        F.binary_cross_entropy_with_logits(logits, train.label).backward()
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        results.append((logits.detach(), grads))
    (plain, plain_grads), (ckpt, ckpt_grads) = results
    assert torch.allclose(plain, ckpt, atol=1e-6)
    assert len(plain_grads) == len(ckpt_grads) == len(list(module.parameters()))
    for a, b in zip(plain_grads, ckpt_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # the Choices' own soft methods are back after the forward
    assert all("soft" not in vars(c) for c in module.supernet.choices)


def test_checkpointed_steps_free_their_graphs():
    data = small_data(n_train=64).load()
    train = data.splits["train"]
    module = DNASModule(small_space(data.spec), activation_checkpointing=True)

    def step() -> int:
        relaxation = module.relax(step=0, batch_size=64)
        logits = module.soft_forward(train.dense, train.sparse, relaxation.samples)
        F.binary_cross_entropy_with_logits(logits, train.label).backward()
        del relaxation, logits
        gc.collect()
        return sum(1 for o in gc.get_objects() if torch.is_tensor(o))

    live = [step() for _ in range(3)]
    assert live[2] == live[1], live  # nothing of a step outlives it


# ---- the search ------------------------------------------------------------------------------


def interaction_space(spec) -> SearchSpace:
    """One Choice reading only the embeddings of the two interacting fields: a compressed dot
    product (expresses <e1, e2> exactly) or a 2-wide linear layer (LayerNorm over two
    units leaves one sign bit)."""
    return SearchSpace(
        spec,
        [
            ChoiceSpec(
                blocks=("linear", "dot_product"),
                candidates=(1,),
                dims={"linear": (2,), "dot_product": (2,)},
            )
        ],
        embedding_dim=8,
        bottleneck=8,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_dnas_selects_the_block_that_expresses_the_planted_interaction(seed):
    # Labels depend on the C1 x C2 interaction only: no first-order or dense signal.
    source = SyntheticCTR(
        n_train=8192,
        n_val=512,
        n_test=16,
        n_dense=1,
        cardinalities=(30, 30),
        interactions=[("C1", "C2")],
        gates=[],
        first_order_scale=0.0,
        dense_scale=0.0,
        interaction_scale=3.0,
        ctr=0.5,
        seed=seed,
    )
    data = source.load()
    L.seed_everything(seed)
    space = interaction_space(data.spec)
    module = DNASModule(space, lr=1e-2, arch_lr=0.05, init="uniform", seed=seed)
    temp = GumbelTemperature("exponential", start=2.0, end=0.5, warmup_steps=32)
    trainer(max_epochs=10, limit_val_batches=0, callbacks=[temp]).fit(
        module, DataLoader(TensorDataset(*_tensors(data.splits["train"])), batch_size=256)
    )
    block_probs = module.arch.probs()[space.choice_decisions[0].block]
    assert module.most_likely().choices[0].block == "dot_product"
    assert float(block_probs[1]) > 0.8


def _tensors(split):
    return split.dense, split.sparse, split.label


class ThetaAtEnd(Callback):
    def __init__(self) -> None:
        self.theta = None

    def on_train_end(self, trainer, pl_module):
        self.theta = pl_module.arch.logits.detach().clone()


def _resume_setup(seed: int = 0):
    L.seed_everything(seed)
    data = small_data(n_train=640).load()
    space = small_space(data.spec)
    module = DNASModule(
        space, sampling="example", hard=True, seed=7, curve_every_n_steps=3, update="alternate"
    )
    callbacks = [
        GumbelTemperature("exponential", start=3.0, end=0.3, warmup_steps=2),
        FlopsRegularizer(2000.0, estimator="sampled"),
    ]
    return data, module, callbacks


def test_resumed_search_matches_an_uninterrupted_one(tmp_path):
    # 640 rows / 128 = 5 steps per epoch; checkpoint after epoch 2 (step 10), stop at 20.
    data, module, callbacks = _resume_setup()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_top_k=-1)
    end = ThetaAtEnd()
    trainer(max_steps=20, enable_checkpointing=True, callbacks=[*callbacks, ckpt, end]).fit(
        module, loader(data.splits["train"]), loader(data.splits["val"])
    )
    path = next(p for p in tmp_path.glob("*.ckpt") if "step=10" in p.name)

    data, resumed, callbacks = _resume_setup(seed=123)  # a different global seed on restart
    end2 = ThetaAtEnd()
    trainer(max_steps=20, callbacks=[*callbacks, end2]).fit(
        resumed, loader(data.splits["train"]), loader(data.splits["val"]), ckpt_path=path
    )
    assert not torch.equal(end.theta, DNASModule(module.space).arch.logits)  # it searched
    assert torch.equal(end.theta, end2.theta)
    for a, b in zip(module.supernet.parameters(), resumed.supernet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.curves["entropy"] == module.curves["entropy"]
    assert resumed.temperature == module.temperature


def test_alternate_update_steps_weights_and_theta_in_turn():
    data = small_data(n_train=768).load()
    module = DNASModule(small_space(data.spec), update="alternate", alternate_every=2)
    weights = next(module.supernet.parameters())
    seen = []

    class Watch(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = (weights.detach().clone(), pl_module.arch.logits.detach().clone())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            w, t = self.before
            seen.append((not torch.equal(w, weights), not torch.equal(t, pl_module.arch.logits)))

    trainer(max_steps=6, limit_val_batches=0, callbacks=[Watch()]).fit(
        module, loader(data.splits["train"])
    )
    w_step, theta_step = (True, False), (False, True)
    assert seen == [w_step, w_step, theta_step, theta_step, w_step, w_step]
    assert module.global_step == 6


@pytest.mark.parametrize(
    "update, every, w_steps, theta_steps",
    [("joint", 1, 6, 6), ("alternate", 1, 3, 3), ("alternate", 2, 4, 2)],
)
def test_each_optimiser_takes_its_scheduled_number_of_steps(update, every, w_steps, theta_steps):
    # 6 batches: joint steps both on each; alternate_every=1 steps W on 0, 2, 4 and theta on
    # 1, 3, 5; alternate_every=2 steps W on 0, 1, 4, 5 and theta on 2, 3. Adam's per-parameter
    # step count is the number of steps that parameter took (the soft forward gives every
    # supernet weight a gradient).
    data = small_data(n_train=768).load()
    module = DNASModule(small_space(data.spec), update=update, alternate_every=every)
    fit = trainer(max_steps=6, limit_val_batches=0)
    fit.fit(module, loader(data.splits["train"]))
    opt_w, opt_theta = fit.optimizers
    weights = list(module.supernet.parameters())
    assert [int(opt_w.state[p]["step"]) for p in weights] == [w_steps] * len(weights)
    assert int(opt_theta.state[module.arch.logits]["step"]) == theta_steps
    assert module.global_step == 6


# ---- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"update": "both"}, "update"),
        ({"sampling": "row"}, "sampling"),
        ({"arch_lr": 0.0}, "arch_lr"),
        ({"arch_optimizer": "lbfgs"}, "arch_optimizer"),
        ({"alpha": -1.0}, "alpha"),
        ({"cost": "l2"}, "cost"),
        ({"target_flops": -5}, "target_flops"),
        ({"flops_estimator": "mean"}, "flops_estimator"),
        ({"temperature": {"schedule": "cosine"}}, "temperature.schedule"),
        ({"temperature": {"start": 0.0}}, "temperature.start"),
        ({"temperature": {"warmup_steps": 1.5}}, "temperature.warmup_steps"),
        ({"temperature": {"anneal": 10}}, "temperature.anneal"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_bad_config_names_its_key(options, key):
    space = small_space(small_data().spec)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DNAS(**options).build(space)


def test_sixteen_bit_mixed_precision_is_refused():
    # On CPU Lightning turns 16-mixed into bf16-mixed, so ask the hook with a GPU's setting.
    module = DNASModule(small_space(small_data().spec))
    module.trainer = SimpleNamespace(precision="16-mixed")
    with pytest.raises(ValueError, match="16-mixed"):
        module.on_fit_start()


# ---- `rankitect-search method=dnas` ----------------------------------------------------------


def test_search_writes_the_most_likely_architecture(tmp_path):
    from hydra import compose, initialize_config_dir

    from rankitect.cli.config import conf_dir
    from rankitect.search.run import search

    overrides = [
        "method=dnas",
        "final=none",
        "search_space=generic",
        "logger=none",
        "data.source.n_train=2048",
        "data.source.n_val=512",
        "data.source.n_test=64",
        "trainer.max_steps=12",
        "trainer.val_check_interval=6",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "method.target_flops=3000",
        "method.curve_every_n_steps=4",
    ]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=overrides)
    results = search(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == "dnas" and saved["steps"] == 12
    assert saved["target_flops"] == 3000
    arch = json.loads((tmp_path / "best_arch.json").read_text())
    assert arch == results["arch"]
    assert set(saved["curves"]) == {
        "temperature",
        "train_loss",
        "train_ne",
        "expected_flops",
        "most_likely_flops",
        "entropy",
        "val_ne",
    }
    assert [s for s, _ in saved["curves"]["entropy"]] == [4, 8, 12]
    assert [s for s, _ in saved["curves"]["val_ne"]] == [6, 12]
    assert saved["curves"]["most_likely_flops"][-1][1] == saved["flops"]
    temps = [t for _, t in saved["curves"]["temperature"]]
    assert temps == sorted(temps, reverse=True) and math.isclose(temps[-1], 0.2, rel_tol=1e-9)
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_multirun_over_the_flops_target_writes_one_search_per_target(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankitect.cli.search",
            "-m",
            "method=dnas",
            "final=none",
            "method.target_flops=2000,6000",
            "search_space=generic",
            "logger=none",
            "data.source.n_train=1024",
            "data.source.n_val=256",
            "data.source.n_test=64",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/results.json"))
    ]
    assert [(r["method"], r["target_flops"], r["steps"]) for r in results] == [
        ("dnas", 2000.0, 4),
        ("dnas", 6000.0, 4),
    ]
