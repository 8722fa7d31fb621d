"""Baselines: shapes, exact FLOPs vs FlopCounterMode, parameter counts, gradients, learning."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rankitect.data.spec import FeatureSpec
from rankitect.models import (
    DLRM,
    DNN,
    LR,
    MLP,
    CrossNetV2,
    DCNv2,
    DeepFM,
    DotInteraction,
    FactorizationMachine,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
MODELS = [LR, DNN, DLRM, DCNv2, DeepFM]
# Small configurations so each test runs in milliseconds.
SMALL = {
    LR: {},
    DNN: {"embedding_dim": 4, "hidden_units": [16, 8], "dropout": 0.0},
    DLRM: {
        "embedding_dim": 4,
        "bottom_hidden_units": [8],
        "top_hidden_units": [16, 8],
        "dropout": 0.0,
    },
    DCNv2: {"embedding_dim": 4, "num_cross_layers": 2, "hidden_units": [16, 8], "dropout": 0.0},
    DeepFM: {"embedding_dim": 4, "hidden_units": [16, 8], "dropout": 0.0},
}


def make_batch(spec: FeatureSpec, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, spec.n_dense, generator=g)
    sparse = torch.stack(
        [torch.randint(0, c, (n,), generator=g) for c in spec.sparse_cardinalities], dim=1
    )
    return dense, sparse


def counted_flops(model: nn.Module, dense: torch.Tensor, sparse: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(dense, sparse)
    return counter.get_total_flops()


@pytest.mark.parametrize("n_dense", [0, 3])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_forward_gives_one_logit_per_example(cls, n_dense):
    torch.manual_seed(0)
    spec = FeatureSpec(n_dense, (5, 7, 3))
    model = cls(spec, **SMALL[cls])
    dense, sparse = make_batch(spec, 6, seed=1)
    for mode in (model.train, model.eval):
        mode()
        out = model(dense, sparse)
        assert out.shape == (6,)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


units = st.lists(st.integers(1, 12), min_size=0, max_size=3)
nonempty_units = st.lists(st.integers(1, 12), min_size=1, max_size=3)


@st.composite
def model_configs(draw, cls):
    spec = FeatureSpec(
        draw(st.sampled_from([0, 3])),
        tuple(draw(st.lists(st.integers(1, 20), min_size=2, max_size=4))),
    )
    if cls is LR:
        return spec, {}
    kwargs = {
        "embedding_dim": draw(st.integers(1, 6)),
        "activation": draw(st.sampled_from(["relu", "tanh", "ReLU", "gelu"])),
        "batch_norm": draw(st.booleans()),
        "dropout": draw(st.sampled_from([0.0, 0.3])),
    }
    if cls in (DNN, DeepFM):
        kwargs["hidden_units"] = draw(units)
    elif cls is DLRM:
        kwargs["bottom_hidden_units"] = draw(units)
        kwargs["top_hidden_units"] = draw(units)
        kwargs["interaction"] = draw(st.sampled_from(["dot", "cat"]))
    else:
        kwargs["hidden_units"] = draw(nonempty_units)
        kwargs["num_cross_layers"] = draw(st.integers(1, 3))
        kwargs["structure"] = draw(st.sampled_from(["parallel", "stacked"]))
    return spec, kwargs


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_flops_and_params_are_exact(cls):
    @settings(max_examples=12, deadline=None, derandomize=True)
    @given(config=model_configs(cls))
    def check(config):
        spec, kwargs = config
        model = cls(spec, **kwargs)
        dense, sparse = make_batch(spec, 4, seed=0)
        for mode in (model.train, model.eval):
            mode()
            assert counted_flops(model, dense, sparse) == 4 * model.flops()
        assert model.num_params() == sum(p.numel() for p in model.parameters())

    check()


def test_flops_formulas_by_hand():
    # Worked by hand for N=3 fields, D=4, n_dense=2: x0 = 3*4 + 2 = 14.
    spec = FeatureSpec(2, (5, 7, 3))
    dnn = DNN(spec, embedding_dim=4, hidden_units=[8, 6])
    assert dnn.flops() == 2 * (14 * 8 + 8 * 6 + 6 * 1)
    # F = 3 + 1 vectors; top input 4 + 4*3/2 = 10
    dlrm = DLRM(spec, embedding_dim=4, bottom_hidden_units=[5], top_hidden_units=[7])
    assert dlrm.flops() == 2 * (2 * 5 + 5 * 4) + 2 * 4 * 4 * 4 + 2 * (10 * 7 + 7 * 1)
    dcn = DCNv2(spec, embedding_dim=4, num_cross_layers=2, hidden_units=[9], structure="parallel")
    assert dcn.flops() == 2 * 2 * 14 * 14 + 2 * 14 * 9 + 2 * (14 + 9)
    assert DeepFM(spec, embedding_dim=4, hidden_units=[8]).flops() == 2 * 2 + 2 * (14 * 8 + 8)
    assert LR(spec).flops() == 2 * 2


# Frappe_x1 in BARS: 10 categorical fields whose tables hold 5389 rows in total (the LR log's
# 5390 parameters = 5389 weights + 1 bias). Only the total matters for the counts.
FRAPPE = FeatureSpec(0, (957, 4082, 7, 7, 2, 3, 2, 9, 80, 240))


@pytest.mark.parametrize(
    ("config", "overrides", "bars_total"),
    [
        # "Total number of parameters" in the reczoo/BARS ranking/ctr/*_frappe_x1/README.md logs
        ("lr", {}, 5390),
        ("deepfm", {}, 423280),
        ("dcnv2", {}, 458391),
        ("dlrm", {"interaction": "cat"}, 417891),
    ],
)
def test_default_configs_match_bars_frappe_parameter_counts(config, overrides, bars_total):
    factory = instantiate(OmegaConf.load(CONF / f"{config}.yaml"), **overrides)
    model = factory(spec=FRAPPE)
    assert sum(p.numel() for p in model.parameters()) == bars_total


# model=arch needs an architecture file: tests/test_train_cli.py trains one.
BASELINE_CONFIGS = sorted(p for p in CONF.glob("*.yaml") if p.stem != "arch")


@pytest.mark.parametrize("path", BASELINE_CONFIGS, ids=lambda p: p.stem)
def test_every_model_config_builds_a_working_model(path):
    cfg = OmegaConf.load(path)
    assert cfg._partial_ is True
    torch.manual_seed(0)
    model = instantiate(cfg)(spec=FRAPPE)
    assert model.emb_l2 == cfg.emb_l2 > 0
    dense, sparse = make_batch(FRAPPE, 4, seed=0)
    assert model(dense, sparse).shape == (4,)
    assert counted_flops(model, dense, sparse) == 4 * model.flops()


def test_config_names_cover_all_baselines():
    assert {p.stem for p in CONF.glob("*.yaml")} >= {"lr", "dnn", "dlrm", "dcnv2", "deepfm"}


@pytest.mark.parametrize("n_dense", [0, 3])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_every_parameter_gets_a_gradient(cls, n_dense):
    torch.manual_seed(0)
    spec = FeatureSpec(n_dense, (5, 7, 3))
    model = cls(spec, **SMALL[cls])
    # Every id of every field appears, so every table row is used.
    dense, sparse = make_batch(spec, 64, seed=2)
    sparse[:7] = torch.arange(7).unsqueeze(1) % torch.tensor(spec.sparse_cardinalities)
    nn.functional.binary_cross_entropy_with_logits(
        model(dense, sparse), torch.rand(64).round()
    ).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_models_learn_a_simple_signal(cls):
    torch.manual_seed(0)
    spec = FeatureSpec(2, (8, 5, 3))
    dense, sparse = make_batch(spec, 512, seed=3)
    # Label from one sparse field and one dense feature; the others are noise.
    labels = (3 * torch.where(sparse[:, 0] < 4, 1.0, -1.0) + 2 * dense[:, 0] > 0).float()
    model = cls(spec, **SMALL[cls])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]


def test_regularization_loss_is_fuxictr_half_l2_over_whole_tables():
    torch.manual_seed(0)
    spec = FeatureSpec(2, (5, 7, 3))
    model = DeepFM(spec, embedding_dim=4, hidden_units=[8], emb_l2=0.05)
    tables = {n: p for n, p in model.named_parameters() if n.endswith("table.weight")}
    assert set(tables) == {"first_order.weights.table.weight", "embedding.table.weight"}
    expected = 0.5 * 0.05 * sum(float((p.detach() ** 2).sum()) for p in tables.values())
    penalty = model.regularization_loss()
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    # d/dW (lambda / 2) ||W||^2 = lambda W on every row, looked up or not
    for p in tables.values():
        torch.testing.assert_close(p.grad, 0.05 * p.detach())
    assert all(p.grad is None for n, p in model.named_parameters() if n not in tables)
    assert DNN(spec, embedding_dim=4, hidden_units=[8]).regularization_loss().item() == 0.0


def test_initialisation_follows_fuxictr():
    torch.manual_seed(0)
    model = DNN(FeatureSpec(0, (20_000,)), embedding_dim=10, hidden_units=[64])
    assert model.embedding.table.weight.std().item() == pytest.approx(1e-4, rel=0.05)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linear)
    first = linear[0].weight  # xavier normal: std = sqrt(2 / (fan_in + fan_out))
    assert first.std().item() == pytest.approx((2 / (10 + 64)) ** 0.5, rel=0.1)


def test_mlp_layer_order_and_logit_layer():
    mlp = MLP(6, [5, 4], activation="tanh", batch_norm=True, dropout=0.1, out_dim=1)
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == ["Linear", "BatchNorm1d", "Tanh", "Dropout"] * 2 + ["Linear"]
    assert mlp.out_features == 1
    assert MLP(6, []).out_features == 6


def test_dot_interaction_matches_pairwise_loops():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3)
    out = DotInteraction(4, 3)(x)
    pairs = list(itertools.combinations(range(4), 2))
    expected = torch.stack([(x[:, i] * x[:, j]).sum(-1) for i, j in pairs], dim=1)
    torch.testing.assert_close(out, expected)


def test_cross_net_applies_the_dcn_v2_recursion():
    torch.manual_seed(0)
    net = CrossNetV2(5, 2)
    x0 = torch.randn(3, 5)
    x1 = x0 * (x0 @ net.layers[0].weight.T + net.layers[0].bias) + x0
    x2 = x0 * (x1 @ net.layers[1].weight.T + net.layers[1].bias) + x1
    torch.testing.assert_close(net(x0), x2)


def test_fm_equals_sum_of_pairwise_dot_products():
    torch.manual_seed(0)
    emb = torch.randn(3, 5, 4)
    expected = sum((emb[:, i] * emb[:, j]).sum(-1) for i, j in itertools.combinations(range(5), 2))
    torch.testing.assert_close(FactorizationMachine()(emb), expected)


SPEC = FeatureSpec(0, (5, 7))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: DNN(SPEC, hidden_units=[4, 0]), "hidden_units"),
        (lambda: DNN(SPEC, dropout=1.0), "dropout"),
        (lambda: DNN(SPEC, activation="swish-ish"), "activation"),
        (lambda: DNN(SPEC, embedding_dim=0), "dim"),
        (lambda: LR(SPEC, emb_l2=-1.0), "emb_l2"),
        (lambda: DCNv2(SPEC, structure="sideways"), "structure"),
        (lambda: DCNv2(SPEC, hidden_units=[]), "deep tower"),
        (lambda: DCNv2(SPEC, num_cross_layers=0), "num_layers"),
        (lambda: DLRM(SPEC, interaction="sum"), "interaction"),
        (lambda: DLRM(FeatureSpec(0, (5,))), "feature vectors"),
        (lambda: DeepFM(FeatureSpec(3, ())), "sparse field"),
    ],
)
def test_invalid_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()
