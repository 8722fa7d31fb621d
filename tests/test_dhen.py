"""The DHEN baseline: exact FLOPs and parameters, module semantics, composability, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rankitect.data.spec import FeatureSpec
from rankitect.models import DHEN, INTERACTION_MODULES
from rankitect.models.dhen import (
    AttentionModule,
    ConvModule,
    CrossModule,
    DotModule,
    InteractionModule,
    register_module,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "dhen.yaml"
FRAPPE = FeatureSpec(0, (957, 4, 7, 2, 3, 5, 1, 3, 5, 4))  # 10 fields, as Frappe_x1
MODULES = sorted(INTERACTION_MODULES)


def make_batch(spec: FeatureSpec, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, spec.n_dense, generator=g)
    sparse = torch.stack(
        [torch.randint(0, c, (n,), generator=g) for c in spec.sparse_cardinalities], dim=1
    )
    return dense, sparse


def counted_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


layer_st = st.dictionaries(st.sampled_from(MODULES), st.integers(1, 9), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None)
@given(
    layers=st.lists(layer_st, min_size=1, max_size=3),
    head=st.lists(st.integers(1, 9), max_size=2),
    n_dense=st.sampled_from([0, 2]),
    n_sparse=st.integers(1, 4),
    dim=st.integers(1, 5),
)
def test_flops_and_params_match_the_counter_and_the_tensors(layers, head, n_dense, n_sparse, dim):
    torch.manual_seed(0)
    spec = FeatureSpec(n_dense, (3,) * n_sparse)
    model = DHEN(spec, embedding_dim=dim, layers=layers, head_units=head, dropout=0.1)
    dense, sparse = make_batch(spec, 3, seed=1)
    for mode in (model.train, model.eval):
        mode()
        assert counted_flops(model, dense, sparse) == 3 * model.flops()
    assert model.num_params() == sum(p.numel() for p in model.parameters())


def test_default_config_costs_what_the_formulas_give_by_hand():
    model = instantiate(OmegaConf.load(CONF))(spec=FRAPPE)
    assert model.emb_l2 == 0.05
    # n = 10 rows, D = 10, nD = 100; per layer: mlp 4*100*256, dot (2nD + 2nD + 2n^2 D) * 8,
    # attention (8nD + 4n^2) * 16, cross 4*100*32, conv 2*100*(9 + 1)*8; head 2*(100*400 +
    # 400*400 + 400*1)
    layer = 102_400 + 2_400 * 8 + 1_200 * 16 + 12_800 + 16_000
    assert model.flops() == 2 * layer + 400_800 == 740_000
    dense, sparse = make_batch(FRAPPE, 4, seed=0)
    assert counted_flops(model, dense, sparse) == 4 * 740_000
    # per layer: mlp 201*256 + 100, dot 1011*8 + 100, attention 43*16 + 10, cross 200*32 + 100,
    # conv 11*8 + 1, LayerNorm 20; head 100*400 + 400 + 400*400 + 400 + 400 + 1
    layer_params = 51_556 + 8_188 + 698 + 6_500 + 89 + 20
    table = model.embedding.table.weight.numel()
    assert model.num_params() - table == 2 * layer_params + 201_201 == 335_303


def test_modules_compute_their_reference_operations():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3)  # (B, n, D)
    att = AttentionModule(4, 3, 5)
    q, k, v = (F.linear(x, getattr(att, f"w{c}"), getattr(att, f"b{c}")) for c in "qkv")
    ref = F.linear(F.scaled_dot_product_attention(q, k, v), att.wo, att.bo)
    torch.testing.assert_close(att(x), ref)

    dot = DotModule(4, 3, 2)
    compressed = torch.einsum("wn,bnd->bwd", dot.wc, x) + dot.bc[:, None]
    z = torch.einsum("bnd,bwd->bnw", x, compressed)  # every row . every compressed row
    ref = (z.flatten(1) @ dot.wp.flatten(1).T + dot.bp).view(2, 4, 3)
    torch.testing.assert_close(dot(x), ref)

    cross = CrossModule(4, 3, 2)
    x0 = x.flatten(1)
    ref = x0 * (x0 @ cross.v.T @ cross.u.T + cross.b)
    torch.testing.assert_close(cross(x), ref.view(2, 4, 3))

    conv = ConvModule(4, 3, 6)
    c1, c2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 1, 1)
    with torch.no_grad():
        c1.weight.copy_(conv.w1), c1.bias.copy_(conv.b1)
        c2.weight.copy_(conv.w2), c2.bias.copy_(conv.b2)
    torch.testing.assert_close(conv(x), c2(torch.relu(c1(x.unsqueeze(1)))).squeeze(1))


@pytest.mark.parametrize("name", MODULES)
def test_a_smaller_width_equals_a_module_built_with_the_sliced_weights(name):
    torch.manual_seed(0)
    cls = INTERACTION_MODULES[name]
    big, small = cls(4, 3, 6), cls(4, 3, 2)
    small.load_state_dict({k: v.detach() for k, v in big.sliced(2).items()})
    x = torch.randn(5, 4, 3)
    torch.testing.assert_close(big(x, width=2), small(x))
    # a 0/1 prefix mask on the inner units is the same sub-module
    mask = (torch.arange(6) < 2).float().unsqueeze(0)
    torch.testing.assert_close(big(x, mask=mask), small(x), atol=1e-6, rtol=1e-5)


def test_layers_compose_registered_modules_and_reject_unknown_ones():
    class Scale(InteractionModule):
        """A toy module: ``x * sum(g)`` with ``width`` gains (0 FLOPs, ``width`` params)."""

        width_axes = {"g": 0}

        def __init__(self, rows, dim, width):
            super().__init__(rows, dim, width)
            self.g = nn.Parameter(torch.full((width,), 0.5))

        def forward(self, x, width=None, mask=None):
            return x * self.sliced(width)["g"].sum()

        @staticmethod
        def flops_per_width(rows, dim):
            return 0

        @staticmethod
        def params_per_width(rows, dim):
            return 1

        @staticmethod
        def params_fixed(rows, dim):
            return 0

    register_module("scale")(Scale)
    try:
        spec = FeatureSpec(0, (3, 3))
        model = DHEN(spec, embedding_dim=2, layers=[{"scale": 4, "mlp": 3}], head_units=[])
        assert list(model.layers[0].blocks) == ["scale", "mlp"]
        assert model.num_params() == sum(p.numel() for p in model.parameters())
        with pytest.raises(ValueError, match="already registered"):
            register_module("scale")(Scale)
    finally:
        del INTERACTION_MODULES["scale"]
    with pytest.raises(ValueError, match="unknown DHEN interaction module 'scale'"):
        DHEN(spec, layers=[{"scale": 4}])
    with pytest.raises(ValueError, match=r"layers\[0\].mlp"):
        DHEN(spec, layers=[{"mlp": 0}])


def test_dhen_learns_a_planted_interaction():
    torch.manual_seed(0)
    spec = FeatureSpec(2, (8, 5, 3))
    dense, sparse = make_batch(spec, 512, seed=3)
    # label: an interaction of two sparse fields plus a dense slope; the third field is noise
    labels = ((sparse[:, 0] % 2 == sparse[:, 1] % 2).float() * 3 + dense[:, 0] > 1.5).float()
    layers = [dict.fromkeys(MODULES, 4)] * 2
    model = DHEN(spec, embedding_dim=4, layers=layers, head_units=[16], emb_init_std=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(80):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(dense, sparse), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    spec = FeatureSpec(2, (4, 3))
    model = DHEN(spec, embedding_dim=3, layers=[dict.fromkeys(MODULES, 3)] * 2, head_units=[5])
    dense, sparse = make_batch(spec, 32, seed=2)
    sparse[:4] = torch.arange(4).unsqueeze(1) % torch.tensor(spec.sparse_cardinalities)
    F.binary_cross_entropy_with_logits(model(dense, sparse), torch.rand(32).round()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_invalid_arguments_are_refused():
    spec = FeatureSpec(0, (3,))
    with pytest.raises(ValueError, match="dropout"):
        DHEN(spec, dropout=1.0)
    with pytest.raises(ValueError, match="at least one layer"):
        DHEN(spec, layers=[])
    with pytest.raises(ValueError, match="head_units"):
        DHEN(spec, head_units=[0])
