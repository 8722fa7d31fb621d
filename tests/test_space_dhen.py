"""The DHEN search space: decisions, exact costs, JSON, supernet, merge/scale, searches."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from rankitect.cli.config import conf_dir
from rankitect.data import FeatureSpec
from rankitect.models import DHEN
from rankitect.search.checkpointing import checkpoint_choices
from rankitect.space import (
    Arch,
    ChoiceArch,
    DHENArch,
    DHENSpace,
    DHENSupernet,
    build_arch_model,
    build_supernet,
    load_space,
    materialize,
)

FRAPPE_LIKE = FeatureSpec(0, (30,) * 10)
WITH_DENSE = FeatureSpec(3, (7, 5, 4))
NINE = (0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def small_space(spec: FeatureSpec = WITH_DENSE, layers: int = 2, **kw) -> DHENSpace:
    options = {
        "modules": {"mlp": 8, "dot": 2, "attention": 4, "cross": 4, "conv": 2},
        "head_units": [8, 4],
        "embedding_dim": 3,
        **kw,
    }
    return DHENSpace(spec, num_layers=layers, **options)


def batch(spec: FeatureSpec, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, spec.n_dense, generator=g)
    sparse = torch.stack(
        [torch.randint(0, c, (n,), generator=g) for c in spec.sparse_cardinalities], dim=1
    )
    return dense, sparse


@pytest.mark.parametrize(
    ("name", "layers", "decisions"), [("dhen1", 1, 7), ("dhen2", 2, 12), ("dhen4", 4, 22)]
)
def test_shipped_spaces_search_every_block_dimension_with_nine_options(name, layers, decisions):
    space = load_space(name, FRAPPE_LIKE)
    assert isinstance(space, DHENSpace) and space.num_layers == layers
    # 5 modules per layer and 2 head widths
    assert space.num_decisions == decisions == 5 * layers + 2
    assert all(d.kind == "dim" and d.condition is None for d in space.decisions)
    assert all(d.cardinality == 9 for d in space.decisions)
    assert space.log10_size == pytest.approx(decisions * math.log10(9))
    assert space.decisions[0].name == "layer0.mlp"
    assert space.decisions[0].labels == (64, 96, 128, 192, 256, 320, 384, 448, 512)
    assert space.decisions[-1].name == "head.1"
    assert space.decisions[-1].labels == (100, 150, 200, 300, 400, 500, 600, 700, 800)


def test_the_dhen2_seed_is_the_dhen_baseline_model():
    space = load_space("dhen2", FRAPPE_LIKE)
    model_cfg = OmegaConf.load(conf_dir() / "model" / "dhen.yaml")
    baseline = instantiate(model_cfg)(spec=FRAPPE_LIKE)
    seed = space.materialize(space.seed_arch())
    assert isinstance(seed, DHEN)
    assert seed.layer_widths == baseline.layer_widths
    assert seed.head_units == baseline.head_units
    assert space.flops(space.seed_arch()) == baseline.flops() == 740_000


def test_options_are_rounded_deduplicated_and_hold_the_base():
    space = small_space(dim_factors=NINE)
    labels = {d.name: d.labels for d in space.decisions}
    # 2 x (0.25 .. 2) rounded half up: 1, 1, 1, 2, 2, 3, 3, 4, 4 -> deduplicated
    assert labels["layer0.dot"] == (1, 2, 3, 4)
    assert labels["layer1.mlp"] == (2, 3, 4, 6, 8, 10, 12, 14, 16)
    with pytest.raises(ValueError, match="include 1.0"):
        small_space(dim_factors=(0.5, 2.0))
    with pytest.raises(ValueError, match="unknown DHEN interaction module"):
        small_space(modules={"nope": 3})


arch_seed = st.integers(0, 2**31 - 1)


@settings(max_examples=20, deadline=None)
@given(seed=arch_seed, spec=st.sampled_from([WITH_DENSE, FeatureSpec(0, (4, 6))]))
def test_flops_and_params_of_random_archs_are_exact(seed, spec):
    space = small_space(spec)
    arch = space.sample(torch.Generator().manual_seed(seed))
    model = materialize(space, arch)
    dense, sparse = batch(spec, 3, seed=0)
    with FlopCounterMode(display=False) as counter:
        model(dense, sparse)
    assert counter.get_total_flops() == 3 * space.flops(arch)
    table = model.embedding.table.weight.numel()
    assert space.params(arch) == sum(p.numel() for p in model.parameters()) - table
    assert space.embedding_params(arch) == table


def test_expected_flops_is_exact_on_one_hot_and_brute_force_and_differentiable():
    space = small_space(dim_factors=(1.0, 2.0), head_units=[3])
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        values = space.sample_values(g)
        exp = space.expected_flops(space.one_hot(values))
        assert exp.item() == pytest.approx(space.flops(space.decode(values)), rel=1e-6)
    logits = [torch.randn(d.cardinality, generator=g, requires_grad=True) for d in space.decisions]
    probs = [torch.softmax(t.double(), 0) for t in logits]
    # brute force over every architecture of the space (2^11)
    total, plain = 0.0, [p.detach() for p in probs]
    cards = [range(d.cardinality) for d in space.decisions]
    for values in itertools.product(*cards):
        p = math.prod(float(pr[v]) for pr, v in zip(plain, values, strict=True))
        total += p * space.flops(space.decode(values))
    expected = space.expected_flops(probs)
    assert expected.item() == pytest.approx(total, rel=1e-9)
    expected.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in logits)
    # the sampled FLOPs regulariser evaluates it under vmap on per-realisation weights
    stacked = [torch.stack([p, p]) for p in probs]
    torch.testing.assert_close(torch.func.vmap(space.expected_flops)(stacked)[1], expected.detach())


def test_values_decode_encode_and_json_round_trip():
    space = small_space()
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        arch = space.sample(g)
        assert space.decode(space.values(arch)) == arch
        assert space.arch_from_json(arch.to_json()) == arch
        code = space.encode(arch)
        assert code.shape == (space.encoding_size,) and code.sum() == space.num_decisions
    assert space.active(space.sample_values(g, 4)).all()
    assert space.largest() == space.decode([d.cardinality - 1 for d in space.decisions])
    # module order does not matter: validation puts the space's order back
    shuffled = DHENArch.of(
        [{"conv": 2, "cross": 4, "attention": 4, "dot": 2, "mlp": 8}] * 2, [8, 4]
    )
    assert space.validate(shuffled) == space.seed_arch()
    doc = json.loads(space.seed_arch().to_json())
    assert doc == {
        "layers": [{"mlp": 8, "dot": 2, "attention": 4, "cross": 4, "conv": 2}] * 2,
        "head": [8, 4],
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["layers"][1].update(dot=5), r"layer 1, field 'dot': 5 is not an option"),
        (lambda d: d["layers"][0].pop("conv"), r"layer 0, field 'conv': missing"),
        (lambda d: d["layers"][0].update(gru=4), r"layer 0, field 'gru': not a module"),
        (lambda d: d["layers"][0].update(mlp="8"), r"layer 0, field 'mlp': width must be an int"),
        (lambda d: d["layers"].pop(), r"field 'layers': the arch has 1 layers"),
        (lambda d: d["head"].append(4), r"field 'head': the arch has 3 head widths"),
        (lambda d: d["head"].__setitem__(0, 9), r"field 'head\[0\]': 9 is not an option"),
        (lambda d: d.update(extra=1), r"field 'extra': unknown field"),
    ],
)
def test_invalid_arch_json_names_the_field(edit, message):
    space = small_space()
    doc = space.seed_arch().to_dict()
    edit(doc)
    with pytest.raises(ValueError, match=message):
        space.arch_from_json(json.dumps(doc))


def test_a_choice_arch_is_refused_by_the_dhen_space():
    space = small_space()
    with pytest.raises(ValueError, match="takes a DHENArch"):
        space.validate(Arch((ChoiceArch("linear", inputs=(1,), dim=4),)))
    with pytest.raises(ValueError, match="field 'choices': unknown field"):
        space.arch_from_json('{"choices": []}')


@pytest.mark.parametrize("spec", [WITH_DENSE, FeatureSpec(0, (4, 6, 3))])
def test_hard_masks_soft_one_hot_and_materialised_subnet_agree(spec):
    torch.manual_seed(0)
    space = small_space(spec)
    net = build_supernet(space)
    assert isinstance(net, DHENSupernet)
    net.eval()
    dense, sparse = batch(spec, 16, seed=2)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        values = space.sample_values(g)
        arch = space.decode(values)
        model = materialize(space, arch, supernet=net).eval()
        ref = model(dense, sparse)
        torch.testing.assert_close(net(dense, sparse, arch=arch), ref, atol=1e-5, rtol=0)
        soft = net(dense, sparse, soft=space.one_hot(values))
        torch.testing.assert_close(soft, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(net(dense, sparse, soft=space.all_ones()), net(dense, sparse))


def test_soft_masks_are_reverse_cumulative_option_probabilities_with_gradients():
    torch.manual_seed(0)
    space = small_space(FeatureSpec(0, (4, 3)), layers=1, modules={"mlp": 4}, head_units=[])
    net = build_supernet(space)
    (decision,) = space.decisions
    assert decision.labels == (1, 2, 3, 4, 5, 6, 7, 8)
    p = torch.tensor([0.1, 0.0, 0.2, 0.0, 0.3, 0.0, 0.0, 0.4], requires_grad=True)
    dense, sparse = batch(FeatureSpec(0, (4, 3)), 8, seed=0)
    # m[u] = P(width > u): 1 for u = 0, then 0.9, 0.9, 0.7, 0.7, 0.4, 0.4, 0.4
    mask = torch.tensor([[1.0, 0.9, 0.9, 0.7, 0.7, 0.4, 0.4, 0.4]])
    mlp = net.model.layers[0].blocks["mlp"]
    x = net.model.embedding(sparse)
    expected = net.model.head(net.model.layers[0].norm(x + mlp(x, mask=mask)).flatten(1))
    out = net(dense, sparse, soft=[p])
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    # per-example weights give per-example masks
    per_example = [torch.eye(8)[[0, 7] * 4]]
    narrow = materialize(space, space.decode([0]), supernet=net)(dense, sparse)
    wide = materialize(space, space.decode([7]), supernet=net)(dense, sparse)
    out = net(dense, sparse, soft=per_example)
    torch.testing.assert_close(out[0::2], narrow[0::2], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1::2], wide[1::2], atol=1e-5, rtol=0)


def test_transferred_weights_are_copies_and_unchosen_weights_get_no_gradient():
    torch.manual_seed(0)
    space = small_space()
    net = build_supernet(space)
    arch = space.decode([2] * space.num_decisions)
    model = materialize(space, arch, supernet=net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dense, sparse = batch(WITH_DENSE, 8, seed=1)
    F.binary_cross_entropy_with_logits(model(dense, sparse), torch.ones(8)).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    F.binary_cross_entropy_with_logits(net(dense, sparse, arch=arch), torch.ones(8)).backward()
    for name, width in arch.layers[1]:  # the last layer: nothing after it but the head
        grad = next(iter(net.model.layers[1].blocks[name].parameters())).grad
        assert grad[:width].abs().sum() > 0 and grad[width:].abs().sum() == 0, name
    head = net.model.head.weights[0].grad
    assert head[: arch.head[0]].abs().sum() > 0 and head[arch.head[0] :].abs().sum() == 0


def test_checkpointed_soft_forward_has_the_plain_values_and_gradients():
    torch.manual_seed(0)
    space = small_space()
    net = build_supernet(space)
    dense, sparse = batch(WITH_DENSE, 8, seed=1)
    probs = [torch.softmax(torch.randn(d.cardinality), 0) for d in space.decisions]
    results = []
    for checkpointed in (False, True):
        net.zero_grad()
        if checkpointed:
            with checkpoint_choices(net):
                out = net(dense, sparse, soft=probs)
        else:
            out = net(dense, sparse, soft=probs)
        out.sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)
    assert not net.model.checkpoint_layers


def test_merge_takes_the_per_dimension_maximum():
    space = small_space()
    g = torch.Generator().manual_seed(4)
    archs = [space.sample(g) for _ in range(3)]
    merged = space.merge(archs)
    for i, layer in enumerate(merged.layer_widths()):
        for m, w in layer.items():
            assert w == max(a.layer_widths()[i][m] for a in archs)
    assert merged.head == tuple(max(a.head[i] for a in archs) for i in range(2))
    assert space.merge([archs[0]]) == archs[0]
    with pytest.raises(ValueError, match="at least one"):
        space.merge([])


def test_scale_snaps_up_to_an_option_clips_or_widens():
    space = small_space(dim_factors=NINE)
    seed = space.seed_arch()  # mlp 8 (options 2..16), attention 4 (1..8), head 8, 4
    scaled = space.scale(seed, 1.3, ["mlp", "head"])
    # mlp 8 * 1.3 = 10.4 -> option 12; head 8 * 1.3 = 10.4 -> 12, 4 * 1.3 = 5.2 -> 6
    assert all(layer["mlp"] == 12 for layer in scaled.layer_widths())
    assert all(layer["attention"] == 4 for layer in scaled.layer_widths())
    assert scaled.head == (12, 6)
    assert space.validate(scaled) == scaled
    # 8 * 3 = 24 is beyond the largest option 16: clipped, or a widened space holds it
    assert space.scale(seed, 3.0, ["mlp"]).layer_widths()[0]["mlp"] == 16
    assert space.scale(seed, 0.5, ["attention"]).layer_widths()[0]["attention"] == 2
    wide_space, wide = space.scale(seed, 3.0, ["mlp"], widen=True)
    assert isinstance(wide_space, DHENSpace) and wide.layer_widths()[1]["mlp"] == 24
    assert wide_space.decisions[0].labels == (2, 3, 4, 6, 8, 10, 12, 14, 16, 24)
    clipped = space.scale(seed, 3.0, ["mlp"])
    # 2 layers x mlp FLOPs 4 * n * D * (24 - 16), n = 3 fields + 1 dense row, D = 3
    assert wide_space.flops(wide) - space.flops(clipped) == 2 * 4 * 4 * 3 * 8
    with pytest.raises(ValueError, match="unknown block 'gru'"):
        space.scale(seed, 2.0, ["gru"])


def test_build_arch_model_reads_a_dhen_arch_file(tmp_path):
    space = load_space("dhen1", FRAPPE_LIKE)
    arch = space.sample(torch.Generator().manual_seed(0))
    path = tmp_path / "a.json"
    path.write_text(arch.to_json())
    model = build_arch_model(FRAPPE_LIKE, "dhen1", str(path))
    assert isinstance(model, DHEN) and model.flops() == space.flops(arch)
    path.write_text(json.dumps({"layers": [], "head": [400, 400]}))
    with pytest.raises(ValueError, match=r"a\.json.*field 'layers'"):
        build_arch_model(FRAPPE_LIKE, "dhen1", str(path))


TINY_SEARCH = [
    "search_space=dhen1",
    "logger=none",
    "data.source.n_train=512",
    "data.source.n_val=256",
    "data.source.n_test=64",
    "data.batch_size=128",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.max_epochs=1",
]


@pytest.mark.parametrize(
    "method",
    [
        ["method=oneshot_rl", "method.samples_per_update=2", "method.warmup_steps=1"],
        ["method=dnas", "trainer.max_steps=4", "trainer.val_check_interval=2",
         "method.curve_every_n_steps=2"],
    ],
    ids=["oneshot_rl", "dnas"],
)  # fmt: skip
def test_a_search_in_dhen1_writes_an_arch_that_trains(tmp_path, method):
    from rankitect.search.run import search
    from rankitect.train import train

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("search", overrides=["final=none", *TINY_SEARCH, *method])
    results = search(cfg, tmp_path / "search")
    arch_file = tmp_path / "search" / "best_arch.json"
    doc = json.loads(arch_file.read_text())
    assert doc == results["arch"] and set(doc) == {"layers", "head"}
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        train_cfg = compose(
            "train",
            overrides=[
                "model=arch",
                "model.space=dhen1",
                f"model.arch_file={arch_file}",
                *TINY_SEARCH[1:],
            ],
        )
    trained = train(train_cfg, tmp_path / "train")
    assert trained["flops"] == results["flops"]
    assert math.isfinite(trained["test"]["ne"])


def test_transform_functions_delegate_to_the_dhen_space():
    from rankitect.space.transform import merge_archs, scale_arch

    space = small_space(dim_factors=NINE)
    g = torch.Generator().manual_seed(5)
    archs = [space.sample(g) for _ in range(2)]
    assert merge_archs(space, archs) == space.merge(archs)
    result = scale_arch(space, space.seed_arch(), 3.0, ["mlp"], widen=True)
    assert result.space.decisions[0].labels[-1] == 24
    assert result.arch == space.scale(space.seed_arch(), 3.0, ["mlp"], widen=True)[1]
