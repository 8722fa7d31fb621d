"""The shipped spaces contain their baselines exactly, and their blocks train like them.

A grown space names the model config it is grown from (``grown_from``); its seed architecture
must materialise to that model: same parameters, FLOPs and outputs under the same weights.
"""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rankitect.data import FeatureSpec
from rankitect.models import DLRM, DNN
from rankitect.space import SearchSpace, Supernet, build_supernet, load_space, materialize
from rankitect.space.blocks import BlockNorm, LayerSettings, Span
from rankitect.space.spaces import conf_dir, shipped_spaces

FRAPPE_LIKE = FeatureSpec(n_dense=0, sparse_cardinalities=(40,) * 10)
WITH_DENSE = FeatureSpec(n_dense=5, sparse_cardinalities=(30, 20, 10, 25))
BATCH = 64


def choice_spaces(spec):
    spaces = [load_space(name, spec) for name in shipped_spaces()]
    return [s for s in spaces if isinstance(s, SearchSpace)]


def baseline_model(space):
    cfg = OmegaConf.load(conf_dir() / "model" / f"{space.grown_from}.yaml")
    return instantiate(cfg, _partial_=True)(spec=space.spec)


def batch(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    sparse = torch.stack(
        [torch.randint(0, n, (BATCH,), generator=g) for n in spec.sparse_cardinalities], 1
    )
    return torch.randn(BATCH, spec.n_dense, generator=g), sparse


def dnn_state_as_seed(space, dnn: DNN) -> dict[str, torch.Tensor]:
    """The seed subnet's state dict holding the DNN's weights (BatchNorm statistics too)."""
    seed = space.seed_arch()
    hidden = list(seed.reachable())
    linears = [m for m in dnn.mlp.layers if isinstance(m, nn.Linear)]
    norms = [m for m in dnn.mlp.layers if isinstance(m, nn.BatchNorm1d)]
    state = {"embedding.table.weight": dnn.embedding.table.weight}
    for c, linear, bn in zip(hidden, linears[:-1], norms, strict=True):
        inputs = seed.choices[c].inputs
        prefix = f"choices.{c}.blocks.linear"
        if c == hidden[0]:  # the DNN reads [flat embeddings, dense]; the block [dense, sparse]
            n_sparse = dnn.embedding.dim * space.spec.n_sparse
            parts = {1: linear.weight[:, :n_sparse], 0: linear.weight[:, n_sparse:]}
            state.update({f"{prefix}.weight.{k}": parts[k] for k in inputs})
        else:
            state[f"{prefix}.weight.{inputs[0]}"] = linear.weight
        state[f"{prefix}.bias"] = linear.bias
        for name in ("weight", "bias", "running_mean", "running_var"):
            state[f"{prefix}.norm.{name}"] = getattr(bn, name)
    state["classifier.weight"], state["classifier.bias"] = linears[-1].weight, linears[-1].bias
    return state


def _linear_and_norm(prefix: str, linear: nn.Linear, bn: nn.BatchNorm1d, weights: dict):
    state = {f"{prefix}.weight.{k}": w for k, w in weights.items()}
    state[f"{prefix}.bias"] = linear.bias
    for name in ("weight", "bias", "running_mean", "running_var"):
        state[f"{prefix}.norm.{name}"] = getattr(bn, name)
    return state


def dlrm_state_as_seed(space, dlrm: DLRM) -> dict[str, torch.Tensor]:
    """The seed subnet's state dict holding DLRM's weights. DLRM stacks its vectors as
    [bottom output, embeddings]; the dot block reads its inputs in index order, [embeddings,
    bottom output], so the top MLP's columns of the dots are permuted to match."""
    seed = space.seed_arch()
    blocks = {ch.block: c for c, ch in enumerate(seed.choices) if c in seed.reachable()}
    dot = blocks["dot"]
    tops = [c for c in seed.reachable() if c > dot]
    state = {"embedding.table.weight": dlrm.embedding.table.weight}
    n_sparse, d = space.spec.n_sparse, space.embedding_dim
    dense = dlrm.dense_arch is not None
    if dense:  # the bottom MLP: one linear to D, as conf/model/dlrm.yaml
        bottom = seed.choices[dot].inputs[-1] - 2
        linear, bn = dlrm.dense_arch.layers[0], dlrm.dense_arch.layers[1]
        state.update(
            _linear_and_norm(f"choices.{bottom}.blocks.linear", linear, bn, {0: linear.weight})
        )
    # the space's row r is DLRM's vector dlrm_row[r]
    dlrm_row = [r + int(dense) for r in range(n_sparse)] + ([0] if dense else [])
    n = len(dlrm_row)
    position = {
        (int(a), int(b)): p for p, (a, b) in enumerate(torch.triu_indices(n, n, 1).T.tolist())
    }
    order = [
        position[tuple(sorted((dlrm_row[a], dlrm_row[b])))]
        for a, b in torch.triu_indices(n, n, 1).T.tolist()
    ]
    linears = [m for m in dlrm.over_arch.layers if isinstance(m, nn.Linear)]
    norms = [m for m in dlrm.over_arch.layers if isinstance(m, nn.BatchNorm1d)]
    for c, linear, bn in zip(tops, linears[:-1], norms, strict=True):
        (*rest, last) = seed.choices[c].inputs
        if c == tops[0]:  # DLRM's over arch reads [bottom output, dots]
            dots = linear.weight[:, d * int(dense) :][:, order]
            weights = {last: dots, **({rest[0]: linear.weight[:, :d]} if dense else {})}
        else:
            weights = {last: linear.weight}
        state.update(_linear_and_norm(f"choices.{c}.blocks.linear", linear, bn, weights))
    state["classifier.weight"], state["classifier.bias"] = linears[-1].weight, linears[-1].bias
    return state


SEED_MAPS = {"dnn": dnn_state_as_seed, "dlrm": dlrm_state_as_seed}


def grown_spaces():
    return [
        (name, spec)
        for spec in (FRAPPE_LIKE, WITH_DENSE)
        for name in shipped_spaces()
        if getattr(load_space(name, spec), "grown_from", None)
    ]


def test_every_grown_from_space_is_tested():
    names = {name for name, _ in grown_spaces()}
    assert {"rankitect_frappe", "rankitect_dlrm"} <= names
    for name in names:
        assert load_space(name, FRAPPE_LIKE).grown_from in SEED_MAPS, name


@pytest.mark.parametrize(("name", "spec"), grown_spaces())
def test_seed_architecture_is_its_baseline(name, spec):
    space = load_space(name, spec)
    torch.manual_seed(0)
    base = baseline_model(space)
    with torch.no_grad():  # off the initialisation, so the statistics and weights are tested
        for p in base.parameters():
            p.normal_(0.0, 0.3)
        for m in base.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    seed = materialize(space, space.seed_arch())
    seed.load_state_dict(SEED_MAPS[space.grown_from](space, base))
    assert seed.num_params() == base.num_params() == sum(p.numel() for p in base.parameters())
    assert space.flops(space.seed_arch()) == base.flops()
    dense, sparse = batch(spec)
    for mode in ("train", "eval"):  # batch statistics and dropout; running statistics
        getattr(base, mode)(), getattr(seed, mode)()
        torch.manual_seed(1)
        want = base(dense, sparse)
        torch.manual_seed(1)
        got = seed(dense, sparse)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # the train-mode forward moved the running statistics alike
    for m in base.modules():
        if isinstance(m, nn.BatchNorm1d):
            last_bn = m
    last = space.seed_arch().reachable()[-1]
    stats = seed.choices[str(last)].blocks["linear"].norm.running_mean
    torch.testing.assert_close(stats, last_bn.running_mean, atol=1e-6, rtol=1e-5)
    with FlopCounterMode(display=False) as counter:
        seed(dense, sparse)
    assert counter.get_total_flops() / BATCH == base.flops()


@pytest.mark.parametrize(("name", "spec"), grown_spaces())
def test_seed_trains_under_the_baselines_regularisation(name, spec):
    space = load_space(name, spec)
    base = baseline_model(space)
    seed = materialize(space, space.seed_arch())
    # dropout where the baseline has it: after its hidden layers (DLRM: the top MLP's only)
    dropouts = [seed.dropout(c) for c in space.seed_arch().reachable() if seed.dropout(c)]
    assert dropouts == [m.p for m in base.modules() if isinstance(m, nn.Dropout)]
    assert seed.emb_l2 == base.emb_l2
    # the supernet trains under the same settings, and hands them to its subnets
    net = Supernet(space)
    assert net.emb_l2 == base.emb_l2 and net.settings == seed.settings
    assert net.regularization_loss() > 0


def logit_spread(model, spec) -> float:
    dense, sparse = batch(spec, seed=3)
    with torch.no_grad():
        return float(model.train()(dense, sparse).std())


@pytest.mark.parametrize("spec", [FRAPPE_LIKE, WITH_DENSE], ids=["frappe_like", "with_dense"])
def test_blocks_are_not_near_constant_functions_at_init(spec):
    """The logit's spread across examples at initialisation (the first training steps) is of
    the DNN's order for every space's seed and for the median sampled architecture: tiny
    embeddings under LayerNorm with random biases gave ~1/40 of it (docs/benchmarks.md)."""
    torch.manual_seed(0)
    dnn = DNN(spec)
    reference = logit_spread(dnn, spec)
    assert reference > 0.3
    gen = torch.Generator().manual_seed(0)
    for space in choice_spaces(spec):
        archs = [space.sample(gen) for _ in range(15)]
        spreads = sorted(logit_spread(materialize(space, a), spec) for a in archs)
        assert spreads[7] > 0.3 * reference, (space.name, spreads)
        if space.has_seed:
            assert logit_spread(materialize(space, space.seed_arch()), spec) > 0.3 * reference


def test_the_papers_blocks_are_one_setting_away_and_differ():
    space = load_space("rankitect_frappe", FRAPPE_LIKE)
    cfg = OmegaConf.load(conf_dir() / "search_space/rankitect_frappe.yaml")
    paper_cfg = {**OmegaConf.to_container(cfg), "layer": {"norm": "layer", "init": "torch"}}
    paper = load_space(paper_cfg, FRAPPE_LIKE)
    assert paper.layer == LayerSettings(norm="layer", init="torch")
    arch = space.seed_arch()
    # LayerNorm keeps 2 parameters per feature as BatchNorm does; the FLOPs are the same
    assert paper.flops(arch) == space.flops(arch) and paper.params(arch) == space.params(arch)
    torch.manual_seed(0)
    ln = materialize(paper, arch)
    assert not any(isinstance(m, BlockNorm) and m.kind == "batch" for m in ln.modules())
    biases = [b for n, b in ln.named_parameters() if n.endswith(".bias") and "norm" not in n]
    assert biases and all(float(b.detach().abs().max()) > 0 for b in biases)


@pytest.mark.parametrize(
    "layer",
    [
        {"norm": "group"},
        {"init": "he"},
        {"dropout": 1.0},
        {"emb_l2": -1},
        {"normm": "batch"},
        {"dropout": float("nan")},
        {"activation": "swish"},
        {"norm_order": "post"},
    ],
)
def test_bad_layer_settings_name_the_key(layer):
    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "search_space/generic.yaml"))
    key = next(iter(layer))
    with pytest.raises(ValueError, match=f"layer(: unknown key|\\.{key})"):
        load_space({**cfg, "layer": layer}, WITH_DENSE)


def test_batch_norm_under_a_sliced_span_updates_only_those_statistics():
    norm = BlockNorm("batch", 6).train()
    z = torch.randn(32, 2) * 3 + 5
    norm.hard(z, Span(2, start=3))
    assert torch.all(norm.running_mean[[0, 1, 2, 5]] == 0)
    torch.testing.assert_close(norm.running_mean[3:5], 0.1 * z.mean(0))
    scattered = BlockNorm("batch", 6).train()
    scattered.hard(z, Span(2, index=torch.tensor([4, 1])))
    torch.testing.assert_close(scattered.running_mean[[4, 1]], 0.1 * z.mean(0))
    assert torch.all(scattered.running_mean[[0, 2, 3, 5]] == 0)


def test_materialised_subnet_inherits_the_supernets_statistics():
    space = load_space("rankitect", WITH_DENSE)
    net = Supernet(space).train()
    dense, sparse = batch(WITH_DENSE)
    arch = space.sample(torch.Generator().manual_seed(5))
    for _ in range(3):
        net(dense, sparse, arch=arch)
    sub = materialize(space, arch, net).eval()
    net.batch_stats_in_eval = False  # the supernet's running statistics, as the subnet's
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            sub(dense, sparse), net(dense, sparse, arch=arch), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("name", shipped_spaces())
def test_every_shipped_space_counts_flops_exactly_and_transfers_weights(name):
    spec = FRAPPE_LIKE if "frappe" in name else WITH_DENSE
    space = load_space(name, spec)
    torch.manual_seed(0)
    net = build_supernet(space).eval()
    if isinstance(net, Supernet):
        net.batch_stats_in_eval = False  # the subnet evaluates with the inherited statistics
    dense, sparse = batch(spec)
    gen = torch.Generator().manual_seed(7)
    for _ in range(4):
        arch = space.sample(gen)
        sub = materialize(space, arch, net).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            got = sub(dense, sparse)
        assert counter.get_total_flops() / BATCH == space.flops(arch), (name, arch)
        with torch.no_grad():
            torch.testing.assert_close(got, net(dense, sparse, arch=arch), atol=1e-5, rtol=0)
