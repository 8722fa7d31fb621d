"""Supernet under hard masks, soft weights and all-ones; materialised subnets, weight transfer."""

import pytest
import torch
import torch.nn.functional as F

from rankitect.data import FeatureSpec
from rankitect.space import Supernet, load_space, materialize
from rankitect.space.layout import arch_shapes

SPEC = FeatureSpec(n_dense=6, sparse_cardinalities=(9, 5, 7, 11))
FRAPPE_LIKE = FeatureSpec(n_dense=0, sparse_cardinalities=(6,) * 10)
DENSE_ONLY = FeatureSpec(n_dense=7, sparse_cardinalities=())
BATCH = 8


def make(name, spec=SPEC, seed=0):
    """A space, its supernet with non-trivial weights, and a seeded batch."""
    torch.manual_seed(seed)
    space = load_space(name, spec)
    # running statistics in eval, so that eval-mode outputs test their transfer too
    net = Supernet(space, batch_stats_in_eval=False)
    with torch.no_grad():  # move norms and embeddings off their identity/tiny initialisation
        for name_, p in net.named_parameters():
            if "norm" in name_ or "embedding" in name_:
                p.normal_(0.0 if "bias" in name_ else 1.0, 0.5)
        for name_, b in net.named_buffers():
            if "running" in name_:
                b.uniform_(0.5, 1.5) if "var" in name_ else b.normal_(0.0, 0.5)
    dense = torch.randn(BATCH, spec.n_dense)
    cards = torch.tensor(spec.sparse_cardinalities or (1,))
    sparse = (torch.rand(BATCH, spec.n_sparse) * cards[: spec.n_sparse]).long()
    return space, net.eval(), dense, sparse


CASES = [
    ("generic", SPEC),
    ("rankitect", SPEC),
    ("rankitect", FRAPPE_LIKE),
    ("generic", DENSE_ONLY),
    ("rankitect_dlrm", SPEC),
    ("rankitect_dlrm", FRAPPE_LIKE),
]


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_transferred_subnet_equals_supernet_under_its_masks(name, spec):
    space, net, dense, sparse = make(name, spec)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(20):
            arch = space.sample(gen)
            subnet = materialize(space, arch, net).eval()
            expected = net(dense, sparse, arch=arch)
            assert expected.shape == (BATCH,)
            torch.testing.assert_close(subnet(dense, sparse), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_one_hot_soft_weights_equal_hard_masks(name, spec):
    space, net, dense, sparse = make(name, spec)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(8):
            values = space.sample_values(gen)
            arch = space.decode(values)
            soft = net(dense, sparse, soft=space.one_hot(values))
            # the dot block's logits reach ~10 here: float32 rounding of the larger soft bmm
            hard = net(dense, sparse, arch=arch)
            torch.testing.assert_close(soft, hard, atol=1e-5, rtol=1e-6)


def test_per_example_soft_weights_select_per_example_archs():
    space, net, dense, sparse = make("rankitect")
    gen = torch.Generator().manual_seed(3)
    v1, v2 = space.sample_values(gen), space.sample_values(gen)
    rows = torch.arange(BATCH) % 2 == 0
    weights = [
        torch.where(rows[:, None], a, b)
        for a, b in zip(space.one_hot(v1), space.one_hot(v2), strict=True)
    ]
    with torch.no_grad():
        out = net(dense, sparse, soft=weights)
        want = torch.where(
            rows,
            net(dense, sparse, arch=space.decode(v1)),
            net(dense, sparse, arch=space.decode(v2)),
        )
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_hard_masks_compute_only_the_chosen_blocks():
    space, net, dense, sparse = make("rankitect")
    net.train()
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        arch = space.sample(gen)
        net.zero_grad(set_to_none=True)
        net(dense, sparse, arch=arch).sum().backward()
        used = set(arch.reachable())
        shapes = arch_shapes(space, arch)
        for c, module in enumerate(net.choices):
            ch = arch.choices[c]
            for block, sub in module.blocks.items():
                if c not in used or block != ch.block:
                    assert all(p.grad is None for p in sub.parameters()), (c, block)
                elif hasattr(sub, "weight"):  # one weight block per candidate input
                    for k, w in sub.weight.items():
                        assert (w.grad is not None) == (int(k) in ch.inputs), (c, block, k)
                else:
                    assert all(p.grad is not None for p in sub.parameters()), (c, block)
            if hasattr(module, "adaptor"):  # projections of the 2-D inputs of a row block
                rows = c in used and ch.block in ("embed_fc", "dot_product")
                for k, w in module.adaptor.weight.items():
                    want = rows and int(k) in ch.inputs and not shapes[int(k)].is3d
                    assert (w.grad is not None) == want, (c, k)
        pairs = {
            f"{ch.left}_{ch.right}"
            for c, ch in enumerate(arch.choices)
            if c in used and ch.block.startswith("pairwise")
        }
        for key, fc in net.pairs.items():
            assert (fc.w1.grad is not None) == (key in pairs), key


def test_soft_weights_are_differentiable():
    space, net, dense, sparse = make("generic")
    logits = [torch.randn(d.cardinality, requires_grad=True) for d in space.decisions]
    out = net(dense, sparse, soft=[torch.softmax(x, -1) for x in logits])
    out.sum().backward()
    for d, x in zip(space.decisions, logits, strict=True):
        assert x.grad.abs().sum() > 0, d.name


def test_whole_supernet_runs_every_block():
    space, net, dense, sparse = make("rankitect")
    out = net(dense, sparse)
    assert out.shape == (BATCH,) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_forward_argument_errors():
    space, net, dense, sparse = make("generic")
    arch = space.sample(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not both"):
        net(dense, sparse, arch=arch, soft=space.priors())
    with pytest.raises(ValueError, match="weight vectors"):
        net(dense, sparse, soft=space.priors()[:-1])
    bad = space.priors()
    bad[0] = torch.ones(bad[0].numel() + 1)
    with pytest.raises(ValueError, match=space.decisions[0].name):
        net(dense, sparse, soft=bad)


@pytest.mark.parametrize("name", ["generic", "rankitect", "rankitect_dlrm"])
def test_supernet_trains_under_sampled_archs(name):
    space, net, dense, sparse = make(name)
    net.train()
    labels = (torch.rand(BATCH) > 0.5).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        arch = space.sample(gen)
        before = net(dense, sparse, arch=arch)
        loss = F.binary_cross_entropy_with_logits(before, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        after = F.binary_cross_entropy_with_logits(net(dense, sparse, arch=arch), labels)
        assert torch.isfinite(loss) and not torch.equal(
            before.detach(), net(dense, sparse, arch=arch)
        )
        assert torch.isfinite(after)


def test_fine_tuning_the_subnet_leaves_the_supernet_alone():
    space, net, dense, sparse = make("rankitect")
    arch = space.seed_arch()
    subnet = materialize(space, arch, net)
    snapshot = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(subnet.parameters(), lr=0.1)
    subnet(dense, sparse).sum().backward()
    opt.step()
    for k, v in net.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
