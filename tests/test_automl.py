"""AutoML over architecture + hyper-parameters: joint space, learning curves, predictor, search."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rankitect.cli.config import conf_dir
from rankitect.metrics import kendall_tau
from rankitect.search.automl import JointConfig, JointSpace, fit_power_law, pick_truncation
from rankitect.search.automl.space import model_key
from rankitect.search.sampling import NeuralPredictor, RLSampler, propose_random
from rankitect.search.sampling.store import arch_key
from rankitect.space import load_space
from rankitect.space.arch import Arch

DATA = {
    "_target_": "rankitect.data.CTRDataModule",
    "batch_size": 256,
    "source": {
        "_target_": "rankitect.data.SyntheticCTR",
        "n_train": 3000,
        "n_val": 400,
        "n_test": 200,
        "n_dense": 4,
        "cardinalities": [20, 30, 50, 40],
        "interactions": [["C1", "C2"]],
        "gates": [],
        "seed": 0,
    },
}
HPARAMS = {"lr": [3e-4, 1e-3, 3e-3], "batch_size": [128, 256], "embedding_dim": [4, 8]}


@pytest.fixture(scope="module")
def spec():
    dm = instantiate(OmegaConf.create(DATA))
    dm.prepare_data()
    dm.setup("fit")
    return dm.feature_spec


@pytest.fixture(scope="module")
def generic_cfg():
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=["search_space=generic"])
    return OmegaConf.to_container(cfg.search_space, resolve=True)


@pytest.fixture(scope="module")
def joint(spec, generic_cfg):
    return JointSpace(generic_cfg, spec, HPARAMS, {"dropout": 0.1})


# ---- the joint space ---------------------------------------------------------------------------


def test_joint_space_round_trips_and_encodes_arch_then_hparams(joint, spec, generic_cfg):
    base = load_space(generic_cfg, spec)
    assert joint.num_decisions == base.num_decisions + 3
    assert joint.encoding_size == base.encoding_size + 3 + 2 + 2
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        config = joint.sample(gen)
        values = joint.values(config)
        assert joint.decode(values) == config
        assert JointConfig.from_json(config.to_json()) == config
        hp = config.hparam_dict
        assert set(hp) == set(HPARAMS) and all(hp[k] in HPARAMS[k] for k in HPARAMS)
        enc = joint.encode(config)
        n = base.encoding_size
        assert torch.equal(enc[:n], base.encode(config.arch))
        # one-hot blocks in declaration order: lr (3), batch_size (2), embedding_dim (2)
        expect = torch.zeros(7)
        expect[HPARAMS["lr"].index(hp["lr"])] = 1
        expect[3 + HPARAMS["batch_size"].index(hp["batch_size"])] = 1
        expect[5 + HPARAMS["embedding_dim"].index(hp["embedding_dim"])] = 1
        assert torch.equal(enc[n:], expect)
        # the architecture space is rebuilt at the trial's embedding dimension
        assert joint.arch_space(config).embedding_dim == hp["embedding_dim"]
        resolved = joint.resolve(config)
        assert resolved["dropout"] == 0.1 and resolved["weight_decay"] == 0.0
    assert joint.space_for(4) is joint.space_for(4)


def test_model_key_ignores_unreachable_choices_only(joint):
    gen = torch.Generator().manual_seed(3)
    found = 0
    for _ in range(200):
        a, b = joint.sample(gen), joint.sample(gen)
        dead = [c for c in range(len(a.arch.choices)) if c not in a.arch.reachable()]
        if not dead or a.arch.choices[dead[0]] == b.arch.choices[dead[0]]:
            continue
        choices = list(a.arch.choices)
        choices[dead[0]] = b.arch.choices[dead[0]]
        twin = JointConfig(joint.base.validate(Arch(tuple(choices))), a.hparams)
        assert arch_key(twin) != arch_key(a) and model_key(twin) == model_key(a)
        assert joint.flops(twin) == joint.flops(a)
        other_hp = dict(a.hparams)
        other_hp["lr"] = next(v for v in HPARAMS["lr"] if v != other_hp["lr"])
        assert model_key(JointConfig(a.arch, tuple(sorted(other_hp.items())))) != model_key(a)
        found += 1
    assert found >= 5


def test_joint_space_errors_name_the_config_key(spec, generic_cfg):
    with pytest.raises(ValueError, match=r"method\.hparams\.momentum: unknown hyper-parameter"):
        JointSpace(generic_cfg, spec, {"momentum": [0.9]})
    with pytest.raises(ValueError, match=r"method\.hparams\.lr: the option list is empty"):
        JointSpace(generic_cfg, spec, {"lr": []})
    with pytest.raises(ValueError, match=r"method\.hparams\.dropout: expected a list"):
        JointSpace(generic_cfg, spec, {"dropout": 0.1})
    with pytest.raises(ValueError, match=r"method\.fixed\.lrate"):
        JointSpace(generic_cfg, spec, {}, {"lrate": 1e-3})


# ---- learning curves ---------------------------------------------------------------------------


def test_power_law_fit_recovers_the_final_value_from_a_truncated_noisy_curve():
    rng = np.random.default_rng(0)
    full = 200_000
    for a, b, c in [(0.30, 0.25, 0.7), (0.42, 0.10, 1.2), (0.25, 0.40, 0.4)]:
        n = np.arange(10_000, 60_001, 10_000, dtype=float)  # the first 30% of the run
        truth = a + b * (n / full) ** -c
        noisy = truth + rng.normal(0, 0.002, len(n))
        fit = fit_power_law(list(zip(n, noisy, strict=True)), full)
        final = a + b  # the law at n = full
        assert not fit.fallback
        assert abs(fit.value - final) < 0.02, (a, b, c, fit)
        # and it beats simply taking the last value
        assert abs(fit.value - final) < abs(noisy[-1] - final)


def test_power_law_fit_falls_back_to_the_last_value():
    fit = fit_power_law([(1000, 0.6), (2000, 0.5)], 10_000)
    assert fit.fallback and fit.value == 0.5 and fit.params is None
    fit = fit_power_law([(1000, 0.6), (2000, float("nan")), (3000, 0.4)], 10_000)
    assert fit.fallback and math.isnan(fit.value) is False and fit.value == 0.4


def _pilots():
    # NE(x) = a + b / x with x = n / 100: A ends best (0.30), then B (0.32), then C (0.335),
    # but early on the order is reversed. By the value reached: B < C once x > 0.5 and A < B
    # once x > 0.8 (a tie at 0.8), so the ranking matches the final one only from n = 90
    # (tau -1 up to n = 50, -1/3 at 60 and 70, 1 at 90).
    laws = [(0.20, 0.10), (0.30, 0.02), (0.33, 0.005)]
    points = range(10, 101, 10)
    return [[(n, a + b / (n / 100)) for n in points] for a, b in laws]


def test_truncation_by_the_value_reached_waits_for_the_rankings_to_agree():
    trunc = pick_truncation(_pilots(), [20, 40, 60, 70, 90], 100, 0.6, rank_by="last")
    assert trunc.examples == 90 and trunc.reached
    taus = {row["examples"]: row["tau_last"] for row in trunc.taus}
    assert taus[20] == pytest.approx(-1) and taus[40] == pytest.approx(-1)
    assert taus[60] == pytest.approx(-1 / 3) and taus[70] == pytest.approx(-1 / 3)
    assert taus[90] == pytest.approx(1)


def test_truncation_by_extrapolation_stops_once_the_fit_has_three_points():
    # Exact power laws: 2 points (n <= 20) fall back to the last value (reversed order),
    # 3 points (n <= 30) determine the law and its extrapolation ranks the pilots right.
    trunc = pick_truncation(_pilots(), [20, 30, 40], 100, 0.6)
    assert trunc.examples == 30 and trunc.reached
    assert [row["tau_extrapolated"] for row in trunc.taus] == pytest.approx([-1, 1])
    never = pick_truncation(_pilots(), [10, 20], 100, 0.6)
    assert never.examples == 20 and not never.reached


# ---- the predictor on the joint space ------------------------------------------------------------


def planted_score(config: JointConfig) -> float:
    """A known score (lower is better) with a learning-rate effect and an architecture one."""
    lr = {3e-4: 1.0, 1e-3: 0.0, 3e-3: 0.5}[config.hparam_dict["lr"]]
    block = 0.0 if config.arch.choices[-1].block == "linear" else 0.8
    batch = 0.3 if config.hparam_dict["batch_size"] == 128 else 0.0
    return lr + block + batch


def test_predictor_ranks_held_out_joint_configs_with_a_hyper_parameter_effect(joint):
    gen = torch.Generator().manual_seed(1)
    configs = propose_random(joint, 140, set(), gen)
    score = [planted_score(c) for c in configs]
    pred = NeuralPredictor(joint, ensemble=3, epochs=200, seed=0)
    pred.fit(configs[:80], score[:80])
    held_out, _ = pred.predict(configs[80:])
    assert kendall_tau(held_out, score[80:]) > 0.6
    # the RL sampler on that predictor proposes better configurations than the prior
    sampler = RLSampler(joint, steps=30, batch=32, seed=0)
    proposed = sampler.propose(pred, 10, set(), round_index=1)
    random_mean = np.mean(score)
    assert np.mean([planted_score(c) for c in proposed]) < random_mean - 0.5


def test_predictor_cost_head_learns_a_given_cost_and_the_sampler_trades_it(joint):
    gen = torch.Generator().manual_seed(2)
    configs = propose_random(joint, 80, set(), gen)
    # cost: seconds per example, 4x higher at batch 128; NE score flat
    cost = [4.0 if c.hparam_dict["batch_size"] == 128 else 1.0 for c in configs]
    pred = NeuralPredictor(joint, ensemble=2, epochs=200, flops_weight=1.0, seed=0)
    pred.fit(configs, [0.0] * len(configs), cost)
    _, predicted = pred.predict(configs)
    assert kendall_tau(predicted, cost) > 0.6
    sampler = RLSampler(joint, steps=30, batch=32, beta=1.0, seed=0)
    proposed = sampler.propose(pred, 10, set(), round_index=1)
    assert all(c.hparam_dict["batch_size"] == 256 for c in proposed)


# ---- end to end ------------------------------------------------------------------------------


def test_automl_search_end_to_end_and_restart(tmp_path):
    from rankitect.search.run import search
    from rankitect.train import train

    overrides = [
        "method=automl",
        "final=none",
        "search_space=generic",
        "data.source.n_train=3000",
        "data.source.n_val=400",
        "data.source.n_test=200",
        "logger=none",
        "method.trials=12",
        "method.pilots=4",
        "method.initial_size=4",
        "method.round_size=3",
        "method.finalists=2",
        "method.low_fidelity.full_examples=3000",
        "method.low_fidelity.eval_every=500",
        "method.low_fidelity.val_examples=400",
        "method.low_fidelity.candidates=[1000,1500,2000]",
        "method.hparams.batch_size=[128,256]",
        "method.hparams.embedding_dim=[4,8]",
        "method.predictor.ensemble=2",
        "method.predictor.epochs=50",
        "method.sampler.steps=10",
        "method.sampler.batch=16",
    ]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=overrides)
    results = search(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == "automl"
    trials = saved["trials"]
    # 4 pilots at the full budget, then 4 + 3 + 1 at the truncation point: 12 in all
    assert len(trials) == 12 and [t["stage"] for t in trials[:4]] == ["pilot"] * 4
    assert all(t["budget"] == 3000 for t in trials[:4])
    trunc = saved["truncation"]["examples"]
    assert trunc in (1000, 1500, 2000) and all(t["budget"] == trunc for t in trials[4:])
    assert [r["evaluated"] for r in saved["rounds"]] == [4, 3, 1]
    curve = [v for _, v in saved["curves"]["best_score_vs_trials"]]
    assert curve == sorted(curve, reverse=True) and curve[-1] == min(t["score"] for t in trials)
    # the result is the finalist with the lowest full-run NE, with its hyper-parameters
    best = saved["finalists"][0]
    assert best["ne"] == saved["ne"] == min(f["ne"] for f in saved["finalists"])
    assert saved["arch"] == best["config"]["arch"] == results["arch"]
    hp = saved["hparams"]
    assert hp["batch_size"] in (128, 256) and hp["embedding_dim"] in (4, 8)
    assert {k: hp[k] for k in best["config"]["hparams"]} == best["config"]["hparams"]
    assert (tmp_path / "curves.png").stat().st_size > 0
    # no two trials train the same model (same reachable Choices and hyper-parameters)
    searched = saved["searched_hparams"]
    keys = {
        model_key(
            JointConfig(
                Arch.from_dict(t["arch"]), tuple(sorted((k, t[f"hp.{k}"]) for k in searched))
            )
        )
        for t in trials
    }
    assert len(keys) == len(trials)
    counts = saved["trial_counts"]
    # the finalists' full runs come on top, except for a finalist that was a pilot
    assert set(counts) == {"done"} and 12 + 0 <= counts["done"] <= 12 + 2

    # the written overrides retrain the found model with its hyper-parameters
    retrain = (tmp_path / "retrain_overrides.txt").read_text().split()
    assert f"data.batch_size={hp['batch_size']}" in retrain
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        tcfg = compose(
            "train",
            overrides=[
                *retrain,
                "data.source.n_train=3000",
                "data.source.n_val=400",
                "data.source.n_test=200",
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "logger=none",
            ],
        )
    trained = train(tcfg, tmp_path / "retrain")
    assert trained["flops"] == saved["flops"]
    assert tcfg.module.lr == hp["lr"] and tcfg.model.dropout == hp["dropout"]

    # a restart with the same store evaluates nothing again and finds the same result
    again = search(cfg, tmp_path)
    assert again["trial_counts"] == counts
    assert again["arch"] == saved["arch"] and again["hparams"] == hp
