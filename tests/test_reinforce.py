"""The policy over decisions and the REINFORCE / off-policy losses of the one-shot search."""

from __future__ import annotations

import math

import pytest
import torch

from rankitect.data import FeatureSpec
from rankitect.search.policy import CategoricalPolicy
from rankitect.search.reinforce import (
    ReplayBuffer,
    flops_cost,
    importance_weights,
    off_policy_loss,
    on_policy_loss,
    relative_ne,
)
from rankitect.space.space import ChoiceSpec, SearchSpace


@pytest.fixture
def space() -> SearchSpace:
    spec = FeatureSpec(n_dense=3, sparse_cardinalities=(5, 7, 4))
    dims = {"linear": (4, 8), "dot_product": (2, 3)}
    choices = [
        ChoiceSpec(("linear", "dot_product", "pairwise_sum"), (0, 1), dims),
        ChoiceSpec(("linear", "dot_product", "pairwise_sum"), (0, 1, 2), dims),
    ]
    return SearchSpace(spec, choices, embedding_dim=4, bottleneck=4)


def test_policy_starts_at_the_prior(space):
    policy = CategoricalPolicy(space)
    for p, d in zip(policy.probs(), space.decisions, strict=True):
        assert torch.allclose(p, torch.tensor(d.prior), atol=1e-5)
    conn = [p for p, d in zip(policy.probs(), space.decisions, strict=True) if d.kind == "conn"]
    assert conn and all(abs(float(p[1]) - 0.8) < 1e-5 for p in conn)


def test_log_prob_counts_only_active_decisions(space):
    policy = CategoricalPolicy(space, init="uniform")
    values = policy.sample(64, torch.Generator().manual_seed(0))
    active = space.active(values)
    cards = torch.tensor([d.cardinality for d in space.decisions], dtype=torch.float)
    expected = -(active * cards.log()).sum(-1)  # uniform: log(1/k) per active decision
    assert torch.allclose(policy.log_prob(values), expected, atol=1e-5)
    assert torch.allclose(policy.entropy(values), -expected, atol=1e-5)


def test_sampling_matches_probabilities(space):
    policy = CategoricalPolicy(space)
    with torch.no_grad():
        policy.logits[0, :3] = torch.tensor([2.0, 0.0, -1.0])
    values = policy.sample(20000, torch.Generator().manual_seed(1))
    freq = torch.bincount(values[:, 0], minlength=3).float() / len(values)
    assert torch.allclose(freq, policy.probs()[0], atol=0.015)
    assert values.max(0).values.lt(torch.tensor([d.cardinality for d in space.decisions])).all()


def test_most_likely_decodes_the_argmax(space):
    policy = CategoricalPolicy(space)
    with torch.no_grad():
        policy.logits[0, :3] = torch.tensor([-5.0, 5.0, -5.0])
    arch = policy.most_likely()
    assert arch.choices[0].block == "dot_product"


def test_reinforce_moves_probability_towards_low_cost(space):
    """Rewards are costs: the block with the lowest reward must become most likely."""
    torch.manual_seed(0)
    policy = CategoricalPolicy(space, init="uniform")
    opt = torch.optim.Adam(policy.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        values = policy.sample(16, gen)
        rewards = (values[:, 0] != 2).double()  # pairwise_sum in choice 0 costs 0, others 1
        loss = on_policy_loss(policy.log_prob(values), rewards)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(policy.probs()[0][2]) > 0.9


def test_off_policy_updates_from_replay_also_learn(space):
    behaviour = CategoricalPolicy(space, init="uniform")
    buffer = ReplayBuffer(capacity=256, num_decisions=space.num_decisions)
    gen = torch.Generator().manual_seed(3)
    values = behaviour.sample(256, gen)
    buffer.add(values, behaviour.log_prob(values), (values[:, 0] != 1).double())
    policy = CategoricalPolicy(space, init="uniform")
    opt = torch.optim.Adam(policy.parameters(), lr=0.1)
    for _ in range(40):
        v, blp, r = buffer.sample(32, gen)
        loss = off_policy_loss(policy.log_prob(v), blp, r)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(policy.probs()[0][1]) > 0.8


def test_importance_weights_are_clipped_and_normalised():
    lp = torch.tensor([0.0, -1.0, -50.0])
    blp = torch.tensor([0.0, 0.0, -80.0])  # third ratio exp(30) must clip to 1e4
    w = importance_weights(lp, blp, clip=1e4)
    raw = torch.tensor([1.0, math.exp(-1.0), 1e4], dtype=torch.float)
    assert torch.allclose(w, raw / raw.sum(), rtol=1e-5)
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)


def test_costs_and_relative_ne():
    flops = torch.tensor([50.0, 100.0, 150.0])
    assert flops_cost(flops, 100.0, "l1").tolist() == [0.5, 0.0, 0.5]
    assert flops_cost(flops, 100.0, "relu").tolist() == [0.0, 0.0, 0.5]
    assert float(relative_ne(torch.tensor(0.9), torch.tensor(1.0))) == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="cost kind"):
        flops_cost(flops, 100.0, "l2")
    with pytest.raises(ValueError, match="target"):
        flops_cost(flops, 0.0)


def test_replay_buffer_wraps_and_round_trips():
    buf = ReplayBuffer(capacity=3, num_decisions=2)
    for i in range(5):
        buf.add(torch.tensor([[i, i]]), torch.tensor([-float(i)]), torch.tensor([float(i)]))
    assert len(buf) == 3
    assert sorted(buf.reward.tolist()) == [2.0, 3.0, 4.0]
    other = ReplayBuffer(capacity=3, num_decisions=2)
    other.load_state_dict(buf.state_dict())
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for a, b in zip(buf.sample(4, gen_a), other.sample(4, gen_b), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="shape"):
        ReplayBuffer(capacity=4, num_decisions=2).load_state_dict(buf.state_dict())
