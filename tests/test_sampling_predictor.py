"""Sampling-based search: neural predictor, RL sampler, successive halving, Pareto front."""

from __future__ import annotations

import math

import pytest
import torch

from rankitect.data.spec import FeatureSpec
from rankitect.metrics import kendall_tau
from rankitect.search.sampling import (
    NeuralPredictor,
    RLSampler,
    arch_key,
    pareto_front,
    propose_random,
    successive_halving,
)
from rankitect.search.sampling.predictor import encode_archs, encode_values, pairwise_loss
from rankitect.space import load_space

SPEC = FeatureSpec(n_dense=4, sparse_cardinalities=(20, 30, 50, 40, 100, 60, 200, 300))


@pytest.fixture(scope="module")
def space():
    return load_space("generic", SPEC)


def known_score(space, archs):
    """A fixed linear function of the encoding plus a log-FLOPs term (lower is better)."""
    w = torch.randn(space.encoding_size, generator=torch.Generator().manual_seed(123))
    flops = torch.tensor([math.log(space.flops(a)) for a in archs])
    return encode_archs(space, archs) @ w + 0.3 * flops


def distinct_archs(space, n, seed):
    return propose_random(space, n, set(), torch.Generator().manual_seed(seed))


def test_batched_encoding_matches_space_encode(space):
    values = space.sample_values(torch.Generator().manual_seed(0), 64)
    expected = torch.stack([space.encode(space.decode(v)) for v in values])
    assert torch.equal(encode_values(space, values), expected)


def test_pairwise_loss_prefers_the_right_order():
    target = torch.tensor([0.0, 1.0, 2.0])
    pairs = torch.combinations(torch.arange(3), 2)
    right = pairwise_loss(torch.tensor([-1.0, 0.0, 1.0]), target, pairs)
    wrong = pairwise_loss(torch.tensor([1.0, 0.0, -1.0]), target, pairs)
    assert right < math.log(2) < wrong


@pytest.mark.parametrize("loss", ["pairwise", "mse"])
def test_predictor_ranks_held_out_architectures(space, loss):
    archs = distinct_archs(space, 260, seed=1)
    score = known_score(space, archs)
    train, test = slice(0, 160), slice(160, None)
    predictor = NeuralPredictor(space, ensemble=3, epochs=200, loss=loss, seed=0)
    predictor.fit(archs[train], score[train].tolist())
    predicted, flops = predictor.predict(archs[test])
    assert kendall_tau(predicted, score[test]) > 0.7
    # The auxiliary FLOPs head (multi-task) learns log-FLOPs, a product of widths that a small
    # MLP on 160 samples fits only roughly: well above chance is what it has to show.
    true_flops = torch.tensor([float(space.flops(a)) for a in archs[test]])
    assert kendall_tau(flops, true_flops) > 0.4


def test_predictor_is_seeded(space):
    archs = distinct_archs(space, 40, seed=2)
    score = known_score(space, archs).tolist()
    a = NeuralPredictor(space, ensemble=2, epochs=30, seed=5).fit(archs, score).predict(archs)
    b = NeuralPredictor(space, ensemble=2, epochs=30, seed=5).fit(archs, score).predict(archs)
    assert torch.equal(a[0], b[0])


def test_rl_sampler_proposes_unscored_architectures_better_than_random(space):
    scored = distinct_archs(space, 150, seed=3)
    predictor = NeuralPredictor(space, ensemble=3, epochs=200, seed=0)
    predictor.fit(scored, known_score(space, scored).tolist())
    exclude = {arch_key(a) for a in scored}
    sampler = RLSampler(space, steps=60, batch=32, lr=0.1, seed=0)
    proposed = sampler.propose(predictor, 16, exclude, round_index=1)
    assert len(proposed) == 16
    keys = [arch_key(a) for a in proposed]
    assert len(set(keys)) == 16 and not set(keys) & exclude
    fresh = propose_random(space, 16, exclude, torch.Generator().manual_seed(9))
    assert known_score(space, proposed).mean() < known_score(space, fresh).mean()


def test_rl_sampler_flops_penalty_moves_proposals_under_the_target(space):
    scored = distinct_archs(space, 80, seed=4)
    predictor = NeuralPredictor(space, ensemble=2, epochs=100, seed=0)
    predictor.fit(scored, known_score(space, scored).tolist())
    target = float(sorted(space.flops(a) for a in scored)[10])  # a low target
    kw = {"steps": 60, "batch": 32, "lr": 0.1, "seed": 0}
    free = RLSampler(space, **kw).propose(predictor, 8, set(), 1)
    cheap = RLSampler(space, alpha=20.0, target_flops=target, **kw).propose(predictor, 8, set(), 1)
    mean_flops = lambda archs: sum(space.flops(a) for a in archs) / len(archs)  # noqa: E731
    assert mean_flops(cheap) < mean_flops(free)
    assert mean_flops(cheap) < 1.5 * target


def test_successive_halving_keeps_the_best_candidates():
    # candidate c has true quality c (lower is better) plus a budget-dependent noise below one
    # quality step, so the survivors of every cut are known in advance
    candidates = list(range(16))[::-1]
    calls = []

    def evaluate(cands, budget, rung):
        calls.append((sorted(cands), budget))
        return [c + ((c * 7) % 5) / (5 * budget) for c in cands]

    rungs = successive_halving(candidates, [1, 10, 100], evaluate, eta=2, finalists=2)
    assert [len(c) for c, _ in calls] == [16, 8, 4]
    assert calls[1][0] == list(range(8)) and calls[2][0] == list(range(4))
    assert rungs[-1].candidates[:2] == [0, 1] and [r.budget for r in rungs] == [1, 10, 100]


def test_successive_halving_drops_failed_candidates():
    rungs = successive_halving(
        ["a", "b", "c", "d"],
        [1, 2],
        lambda cands, b, r: [math.nan if c == "a" else ord(c) for c in cands],
        eta=2,
        finalists=1,
    )
    assert rungs[0].candidates[-1] == "a" and rungs[1].candidates == ["b", "c"]


@pytest.mark.parametrize(
    "kwargs, key", [({"eta": 1}, "eta"), ({"finalists": 0}, "finalists"), ({}, "budgets")]
)
def test_successive_halving_names_bad_settings(kwargs, key):
    budgets = [2, 1] if key == "budgets" else [1, 2]
    with pytest.raises(ValueError, match=f"method.halving.{key}"):
        successive_halving([1, 2], budgets, lambda c, b, r: [0.0] * len(c), **kwargs)


def test_pareto_front():
    points = [(0.5, 10.0), (0.4, 20.0), (0.45, 30.0), (0.3, 40.0), (0.6, 5.0)]
    assert pareto_front(points) == [4, 0, 1, 3]


def test_bad_method_settings_name_their_key(space):
    from rankitect.search.sampling import SamplingSearch

    with pytest.raises(ValueError, match="method.predictor.loss"):
        NeuralPredictor(space, loss="hinge")
    with pytest.raises(ValueError, match="method.sampler.target_flops"):
        RLSampler(space, alpha=1.0)
    sampler = {"_target_": "rankitect.search.sampling.PredictorRLSampler"}
    with pytest.raises(ValueError, match="method.halving"):
        SamplingSearch(evaluator={}, predictor={}, sampler=sampler, halving={"top_k": 2})
    with pytest.raises(ValueError, match="method.workers"):
        SamplingSearch(
            evaluator={}, predictor={}, sampler=sampler, halving={"budgets": [1]}, workers=-1
        )
    with pytest.raises(ValueError, match="method/sampler=predictor_rl"):
        SamplingSearch(evaluator={}, predictor={}, sampler={"steps": 5}, halving={"budgets": [1]})
