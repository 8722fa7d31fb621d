"""DLRM's parameter-free dot block: its maths, its connection rule, DNAS and its costs."""

import itertools

import pytest
import torch
from omegaconf import OmegaConf

from rankitect.data import FeatureSpec
from rankitect.models.blocks import DotInteraction
from rankitect.space import Arch, Supernet, generic_space, load_space, merge_archs, scale_arch
from rankitect.space.arch import ChoiceArch
from rankitect.space.blocks import DotBlock
from rankitect.space.spaces import conf_dir

SPEC = FeatureSpec(n_dense=6, sparse_cardinalities=(9, 5, 7, 11))
DENSE_ONLY = FeatureSpec(n_dense=7, sparse_cardinalities=())


def test_dot_block_is_dlrms_interaction_and_cuts_2d_inputs_into_rows():
    x3 = torch.randn(5, 4, 3)
    block = DotBlock({1: 4}, 3)
    torch.testing.assert_close(block.hard([x3]), DotInteraction(4, 3)(x3))
    # a 2-D input of 7 features reads as 3 rows of D = 3, the last zero-padded
    x2 = torch.randn(5, 7)
    rows = torch.cat([x3, torch.cat([x2, torch.zeros(5, 2)], 1).view(5, 3, 3)], 1)
    got = DotBlock({1: 4, 2: 3}, 3).hard([x3, x2])
    torch.testing.assert_close(got, DotInteraction(7, 3)(rows))
    assert got.shape == (5, 21)


def chain_space():
    """A chain (each Choice reads the raw inputs and the previous Choice): the dot block's
    inputs then have independent row counts and `expected_flops` is exact."""
    return generic_space(
        SPEC,
        num_choices=3,
        blocks=[["linear", "pairwise_sum"], ["dot"], ["linear"]],
        distances=[1],
        dims={"linear": [3, 6]},
        embedding_dim=4,
        bottleneck=2,
    )


def test_a_dot_reads_two_rows_or_more():
    space = chain_space()
    dot = space.choices[1]
    assert dot.candidates == (0, 1, 2) and dot.default_input == 1
    idx = space.choice_decisions[1]
    seen = set()
    for bits in itertools.product((0, 1), repeat=3):
        values = torch.zeros(space.num_decisions, dtype=torch.long)
        values[list(idx.conns)] = torch.tensor(bits)
        inputs = space.decode(values).choices[1].inputs
        on = tuple(k for k, b in zip(dot.candidates, bits, strict=True) if b)
        # one input other than the sparse embeddings also reads them
        assert inputs == (on if len(on) > 1 or on == (1,) else tuple(sorted({*on, 1})))
        seen.add(inputs)
    assert len(seen) == space.choice_counts()[1] == 2**3 - 3
    with pytest.raises(ValueError, match="choice 1, field 'inputs'"):
        space.validate(
            Arch(
                (
                    ChoiceArch("linear", (0,), dim=3),
                    ChoiceArch("dot", (2,)),
                    ChoiceArch("linear", (3,), dim=3),
                )
            )
        )
    with pytest.raises(ValueError, match="choice 1, field 'dim'"):
        Arch((ChoiceArch("linear", (0,), dim=3), ChoiceArch("dot", (1, 2), dim=4)))


def test_expected_flops_of_the_dot_equals_the_exact_expectation():
    space = chain_space()
    gen = torch.Generator().manual_seed(0)
    probs = [
        torch.softmax(torch.randn(d.cardinality, generator=gen, dtype=torch.float64), -1)
        for d in space.decisions
    ]
    # every decision is a value of one Choice: enumerate them all with their probabilities
    exact = torch.zeros((), dtype=torch.float64)
    for values in itertools.product(*(range(d.cardinality) for d in space.decisions)):
        p = torch.prod(torch.stack([q[v] for q, v in zip(probs, values, strict=True)]))
        exact += p * space.flops(space.decode(list(values)))
    assert space.expected_flops(probs).item() == pytest.approx(exact.item(), rel=1e-9)
    for _ in range(10):  # and exact under one-hot weights
        values = space.sample_values(gen)
        one_hot = [p.double() for p in space.one_hot(values)]
        assert space.expected_flops(one_hot).item() == space.flops(space.decode(values))


def test_dnas_soft_forward_through_the_dot_reaches_its_connection_logits():
    space = load_space("rankitect_dlrm", SPEC)
    dot = next(c for c, sp in enumerate(space.choices) if "dot" in sp.blocks)
    assert len(space.choices[dot].candidates) == 3  # dense, sparse, the bottom MLP
    torch.manual_seed(0)
    net = Supernet(space).train()
    dense, sparse = torch.randn(16, 6), torch.randint(0, 5, (16, 4))
    with torch.no_grad():  # embeddings off their 1e-4 initialisation, so the dots matter
        net.embedding.table.weight.normal_()
    logits = [torch.randn(d.cardinality, requires_grad=True) for d in space.decisions]
    probs = [torch.softmax(x, -1) for x in logits]
    net(dense, sparse, soft=probs).pow(2).mean().backward()
    for j in space.choice_decisions[dot].conns:
        assert logits[j].grad.abs().sum() > 0, space.decisions[j].name
    for x in logits:
        x.grad = None
    space.expected_flops([torch.softmax(x, -1) for x in logits]).backward()
    for j in space.choice_decisions[dot].conns:
        assert logits[j].grad.abs().sum() > 0, space.decisions[j].name


def dlrm_config(**seed_changes):
    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "search_space/rankitect_dlrm.yaml"))
    for entry in cfg["seed"]:
        entry.update(seed_changes.get(entry["name"], {}))
    return cfg


READS_A_DOT_PRODUCT = [
    {"name": "compressed", "block": "dot_product", "inputs": ["sparse"], "dim": 4},
    {"name": "interaction", "block": "dot", "inputs": ["compressed", "sparse"]},
    {"name": "top", "block": "linear", "inputs": ["interaction"], "dim": 8},
]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dlrm_config(interaction={"dim": 8}), "seed choice 'interaction': dot has no dim"),
        (dlrm_config(bottom={"dropout": 1.5}), "seed choice 'bottom': dropout"),
        (dlrm_config(top1={"dropout": "none"}), "seed choice 'top1': dropout"),
        (
            {**dlrm_config(), "seed": READS_A_DOT_PRODUCT},
            "seed choice 'interaction': dot reads raw inputs and choices of linear",
        ),
    ],
)
def test_bad_dot_seeds_name_the_seed_choice(cfg, message):
    with pytest.raises(ValueError, match=message):
        load_space(cfg, SPEC)


@pytest.mark.parametrize(
    ("blocks", "spec", "message"),
    [
        ([["linear", "dot"], ["linear"]], SPEC, "dot is allowed alone"),
        ([["linear"], ["dot"]], DENSE_ONLY, "choice 1: the dot block needs the sparse"),
        ([["dot_product"], ["dot"]], SPEC, "choice 1: the dot block cannot read candidate 2"),
    ],
)
def test_bad_dot_choices_name_the_choice(blocks, spec, message):
    with pytest.raises(ValueError, match=message):
        generic_space(
            spec,
            num_choices=2,
            blocks=blocks,
            distances=[1],
            dims={"linear": [4], "dot_product": [2]},
            embedding_dim=4,
            bottleneck=2,
        )


def test_merging_and_scaling_keep_the_dot_and_the_choices_dropout():
    space = load_space("rankitect_dlrm", SPEC)
    dot = next(c for c, sp in enumerate(space.choices) if "dot" in sp.blocks)
    gen = torch.Generator().manual_seed(3)
    archs = [space.sample(gen) for _ in range(4)]
    merged = merge_archs(space, archs)
    assert set(merged.choices[dot].inputs) == {k for a in archs for k in a.choices[dot].inputs}
    result = scale_arch(space, space.seed_arch(), 1.5, widen=True)
    assert result.arch.choices[dot] == space.seed_arch().choices[dot]
    assert [sp.dropout for sp in result.space.choices] == [sp.dropout for sp in space.choices]
    with pytest.raises(ValueError, match="'dot' has no dimension to scale"):
        scale_arch(space, space.seed_arch(), 1.5, blocks=["dot"])
