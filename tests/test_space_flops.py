"""Analytic FLOPs and parameters against FlopCounterMode and the materialised models."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from rankitect.data import FeatureSpec
from rankitect.space import SearchSpace, generic_space, load_space, materialize

SPEC = FeatureSpec(n_dense=6, sparse_cardinalities=(9, 5, 7, 11))
FRAPPE_LIKE = FeatureSpec(n_dense=0, sparse_cardinalities=(6,) * 10)
SPACES = {
    "generic": load_space("generic", SPEC),
    "rankitect": load_space("rankitect", SPEC),
    "rankitect-no-dense": load_space("rankitect", FRAPPE_LIKE),
    "rankitect_dlrm": load_space("rankitect_dlrm", SPEC),
    "rankitect_dlrm-no-dense": load_space("rankitect_dlrm", FRAPPE_LIKE),
}
BATCH = 3


def counted_flops(model, spec) -> float:
    dense = torch.randn(BATCH, spec.n_dense)
    sparse = torch.zeros(BATCH, spec.n_sparse, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(dense, sparse)
    return counter.get_total_flops() / BATCH


@pytest.mark.parametrize("name", list(SPACES))
@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_sampled_arch_builds_trains_and_matches_analytic_costs(name, seed):
    space = SPACES[name]
    torch.manual_seed(seed)
    arch = space.sample(torch.Generator().manual_seed(seed))
    model = materialize(space, arch)
    assert counted_flops(model, space.spec) == space.flops(arch) == model.flops()
    reads_sparse = any(1 in arch.choices[c].sources for c in arch.reachable())
    table = sum(space.spec.sparse_cardinalities) * space.embedding_dim if reads_sparse else 0
    assert space.embedding_params(arch) == table
    assert model.dense_params() == space.params(arch)
    assert (
        model.num_params()
        == space.params(arch) + table
        == sum(p.numel() for p in model.parameters())
    )
    # one training step: finite loss, every parameter gets a finite gradient
    dense = torch.randn(BATCH, space.spec.n_dense)
    sparse = torch.randint(0, 5, (BATCH, space.spec.n_sparse))
    loss = F.binary_cross_entropy_with_logits(model(dense, sparse), torch.ones(BATCH))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_seed_model_flops_by_hand():
    """DLRM seed of conf/search_space/rankitect.yaml, counted by hand (D = 16)."""
    space = load_space("rankitect", SPEC)
    d, n_sparse, n_dense = 16, SPEC.n_sparse, SPEC.n_dense
    bottom = 2 * (n_dense * 128 + 128 * 64 + 64 * 32 + 32 * 16)
    rows = n_sparse + 1  # embeddings plus the projected bottom output
    interaction = 2 * 16 * d + 4 * rows * 8 * d  # projection, EmbedFC and bmm
    top = 2 * ((rows * 8 + 16) * 128 + 128 * 64 + 64 * 32 + 32 * 16) + 2 * 16
    assert space.flops(space.seed_arch()) == bottom + interaction + top
    assert counted_flops(materialize(space, space.seed_arch()), SPEC) == bottom + interaction + top


@pytest.mark.parametrize("name", list(SPACES))
def test_expected_flops_is_exact_for_one_hot_probabilities(name):
    space = SPACES[name]
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        values = space.sample_values(gen)
        probs = [p.double() for p in space.one_hot(values)]
        assert space.expected_flops(probs).item() == space.flops(space.decode(values))


def test_expected_flops_gradients_reach_every_decision():
    space = SPACES["rankitect"]
    logits = [torch.randn(d.cardinality, requires_grad=True) for d in space.decisions]
    space.expected_flops([torch.softmax(x, -1) for x in logits]).backward()
    for d, x in zip(space.decisions, logits, strict=True):
        if d.cardinality > 1:
            assert x.grad.abs().sum() > 0, d.name


def chain_space() -> SearchSpace:
    """Choices read raw inputs and the previous Choice only, and only Choice 1 has pairwise
    blocks: reachability and pair use are then independent events, so the expectation of
    `expected_flops` is exact."""
    return generic_space(
        SPEC,
        num_choices=3,
        blocks=[
            ["linear", "dot_product", "embed_fc"],
            ["linear", "pairwise_gating", "pairwise_sum", "dot_product"],
            ["linear", "embed_fc"],
        ],
        distances=[1],
        dims={"linear": [3, 5], "dot_product": [2, 3], "embed_fc": [1, 2]},
        embedding_dim=4,
        bottleneck=2,
    )


def test_expected_flops_equals_the_exact_expectation():
    space = chain_space()
    gen = torch.Generator().manual_seed(0)
    probs = [
        torch.softmax(torch.randn(d.cardinality, generator=gen, dtype=torch.float64), -1)
        for d in space.decisions
    ]
    # enumerate each Choice's settings with their probabilities (inactive decisions sum out)
    per_choice = []
    for idx in space.choice_decisions:
        options = []
        block_p = probs[idx.block]
        for b, block in enumerate(space.decisions[idx.block].labels):
            if block.startswith("pairwise"):
                for l, r in itertools.product(range(len(probs[idx.left])), repeat=2):
                    p = block_p[b] * probs[idx.left][l] * probs[idx.right][r]
                    options.append((p, {idx.block: b, idx.left: l, idx.right: r}))
                continue
            dim = idx.dims[block]
            for m in range(len(probs[dim])):
                for bits in itertools.product((0, 1), repeat=len(idx.conns)):
                    p = block_p[b] * probs[dim][m]
                    for j, bit in zip(idx.conns, bits, strict=True):
                        p = p * probs[j][bit]
                    options.append(
                        (p, {idx.block: b, dim: m, **dict(zip(idx.conns, bits, strict=True))})
                    )
        per_choice.append(options)
    exact = torch.zeros((), dtype=torch.float64)
    for combo in itertools.product(*per_choice):
        values = [0] * space.num_decisions
        p = torch.ones((), dtype=torch.float64)
        for q, setting in combo:
            p = p * q
            for j, v in setting.items():
                values[j] = v
        exact += p * space.flops(space.decode(values))
    assert space.expected_flops(probs).item() == pytest.approx(exact.item(), rel=1e-9)


def test_expected_flops_rejects_malformed_probabilities():
    space = SPACES["generic"]
    probs = space.priors()
    with pytest.raises(ValueError, match="weight vectors"):
        space.expected_flops(probs[1:])
    probs[2] = torch.ones(1, probs[2].numel())  # batched weights are a supernet-only form
    with pytest.raises(ValueError, match=space.decisions[2].name):
        space.expected_flops(probs)
