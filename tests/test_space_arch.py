"""Arch data, its JSON round-trip and validation, and the decision encoding of a space."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankitect.data import FeatureSpec
from rankitect.space import Arch, ChoiceArch, generic_space, load_space

SPEC = FeatureSpec(n_dense=5, sparse_cardinalities=(7, 11, 13))
FRAPPE_LIKE = FeatureSpec(n_dense=0, sparse_cardinalities=(5,) * 10)


@pytest.fixture(scope="module")
def spaces():
    return {name: load_space(name, SPEC) for name in ("generic", "rankitect")}


def tiny_space(spec=SPEC):
    return generic_space(
        spec,
        num_choices=2,
        blocks=["linear", "pairwise_sum", "dot_product"],
        distances=[1],
        dims={"linear": [2, 3], "dot_product": [1]},
        embedding_dim=4,
        bottleneck=2,
    )


# ---- Arch and JSON ---------------------------------------------------------------------------


def test_json_example_round_trip(spaces):
    text = json.dumps(
        {
            "choices": [
                {"block": "linear", "inputs": [1, 0], "dim": 32},
                {"block": "pairwise_gating", "left": 2, "right": 1},
                {"block": "embed_fc", "inputs": [1, 3], "dim": 4},
                {"block": "dot_product", "inputs": [0, 3, 4], "dim": 2},
            ]
        }
    )
    arch = Arch.from_json(text, spaces["generic"])
    assert arch.choices[0].inputs == (0, 1)  # sorted on load
    assert arch.choices[1].sources == (1, 2)
    assert Arch.from_json(arch.to_json(), spaces["generic"]) == arch
    assert json.loads(arch.to_json())["choices"][1] == {
        "block": "pairwise_gating",
        "left": 2,
        "right": 1,
    }


@pytest.mark.parametrize("name", ["generic", "rankitect"])
def test_sampled_archs_round_trip_through_json(spaces, name):
    space = spaces[name]
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        arch = space.sample(gen)
        assert Arch.from_json(arch.to_json(), space) == arch


def test_arch_is_immutable():
    arch = Arch((ChoiceArch("linear", inputs=(0,), dim=4),))
    with pytest.raises(AttributeError):
        arch.choices = ()


@pytest.mark.parametrize(
    ("choice", "field", "doc"),
    [
        (1, "block", {"block": "conv2d", "inputs": [0], "dim": 16}),
        (1, "inputs", {"block": "linear", "inputs": [4], "dim": 16}),  # choice 2: later
        (1, "inputs", {"block": "linear", "inputs": [3], "dim": 16}),  # choice 1: itself
        (1, "inputs", {"block": "linear", "inputs": [], "dim": 16}),  # no input
        (1, "inputs", {"block": "linear", "inputs": [0, 0], "dim": 16}),
        (1, "dim", {"block": "linear", "inputs": [0], "dim": 0}),
        (1, "dim", {"block": "linear", "inputs": [0]}),
        (1, "right", {"block": "pairwise_sum", "left": 0, "right": 5}),
        (1, "left", {"block": "pairwise_sum", "left": None, "right": 1}),
        (1, "dim", {"block": "pairwise_sum", "left": 0, "right": 1, "dim": 8}),
        (1, "colour", {"block": "linear", "inputs": [0], "dim": 16, "colour": 1}),
    ],
)
def test_structural_errors_name_choice_and_field(choice, field, doc):
    first = {"block": "linear", "inputs": [0], "dim": 16}
    with pytest.raises(ValueError, match=rf"choice {choice}, field '{field}'"):
        Arch.from_json(json.dumps({"choices": [first, doc]}))


def test_space_errors_name_choice_and_field(spaces):
    space = spaces["generic"]
    good = space.sample(torch.Generator().manual_seed(0))

    def with_choice(i, ch):
        return Arch(good.choices[:i] + (ch,) + good.choices[i + 1 :])

    cases = [
        (3, "dim", ChoiceArch("linear", inputs=(3,), dim=17)),  # not an option
        (3, "inputs", ChoiceArch("linear", inputs=(2,), dim=16)),  # distance 3: no candidate
        (3, "left", ChoiceArch("pairwise_sum", left=2, right=4)),
        (2, "dim", ChoiceArch("embed_fc", inputs=(1,), dim=3)),
    ]
    for c, field, ch in cases:
        with pytest.raises(ValueError, match=rf"choice {c}, field '{field}'"):
            space.validate(with_choice(c, ch))
    with pytest.raises(ValueError, match="field 'choices'"):
        space.validate(Arch(good.choices[:3]))
    grown = spaces["rankitect"]
    seed = grown.seed_arch()
    linear_family = next(c for c, ch in enumerate(seed.choices) if ch.block == "linear")
    wrong = ChoiceArch("embed_fc", inputs=seed.choices[linear_family].inputs, dim=4)
    bad = Arch(seed.choices[:linear_family] + (wrong,) + seed.choices[linear_family + 1 :])
    with pytest.raises(ValueError, match=rf"choice {linear_family}, field 'block'"):
        grown.validate(bad)


def test_dense_input_is_rejected_without_dense_features():
    space = tiny_space(FRAPPE_LIKE)
    arch = Arch(
        (ChoiceArch("linear", inputs=(0,), dim=2), ChoiceArch("linear", inputs=(2,), dim=2))
    )
    with pytest.raises(ValueError, match=r"choice 0, field 'inputs'"):
        space.validate(arch)


def test_invalid_json_is_a_value_error():
    with pytest.raises(ValueError, match="not valid JSON"):
        Arch.from_json("{choices: [")
    with pytest.raises(ValueError, match="'choices' list"):
        Arch.from_json('{"blocks": []}')


def test_reachable_follows_edges_back_from_the_last_choice():
    arch = Arch(
        (
            ChoiceArch("linear", inputs=(0,), dim=2),  # 0: read by 2 only
            ChoiceArch("linear", inputs=(1,), dim=2),  # 1: read by nobody
            ChoiceArch("pairwise_sum", left=2, right=1),  # 2
            ChoiceArch("linear", inputs=(4,), dim=2),  # 3: reads choice 2
        )
    )
    assert arch.reachable() == (0, 2, 3)


# ---- decisions -------------------------------------------------------------------------------


def test_decision_list_is_consumable(spaces):
    for space in spaces.values():
        names = [d.name for d in space.decisions]
        assert len(set(names)) == len(names)
        for i, d in enumerate(space.decisions):
            assert d.cardinality == len(d.prior) >= 1
            assert sum(d.prior) == pytest.approx(1.0)
            if d.kind == "block":
                assert d.condition is None
            else:
                j, allowed = d.condition
                assert j < i and space.decisions[j].kind == "block"
                assert space.decisions[j].choice == d.choice
                blocks = {space.decisions[j].labels[v] for v in allowed}
                expected = {
                    "dim": {d.name.split(".")[-1]},
                    "conn": {"linear", "embed_fc", "dot_product"},
                    "left": {"pairwise_gating", "pairwise_sum"},
                    "right": {"pairwise_gating", "pairwise_sum"},
                }[d.kind]
                assert blocks == expected & set(space.decisions[j].labels)
            if d.kind == "conn":
                assert d.prior == pytest.approx((0.2, 0.8))
                sp, idx = space.choices[d.choice], space.choice_decisions[d.choice]
                assert d.input == sp.candidates[idx.conns.index(i)]


@pytest.mark.parametrize("name", ["generic", "rankitect"])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_values_and_decode_are_inverse(spaces, name, seed):
    space = spaces[name]
    values = space.sample_values(torch.Generator().manual_seed(seed))
    arch = space.decode(values)
    back = space.values(arch)
    assert space.decode(back) == arch
    active = space.active(values)
    assert torch.equal(space.active(back), active)
    assert torch.all(back[~active] == 0)  # canonical value of inactive decisions
    assert [d.is_active(values) for d in space.decisions] == active.tolist()
    keep = active.clone()
    for idx in space.choice_decisions:
        conns = list(idx.conns)
        if conns and active[conns[0]] and not values[conns].any():
            # all-off decodes to the default input (the last candidate): only that bit differs
            assert back[conns].tolist() == [0] * (len(conns) - 1) + [1]
            keep[conns] = False
    assert torch.equal(back[keep], values[keep])


def test_encode_is_one_hot_per_active_decision(spaces):
    space = spaces["rankitect"]
    gen = torch.Generator().manual_seed(1)
    archs = [space.sample(gen) for _ in range(30)]
    codes = torch.stack([space.encode(a) for a in archs])
    assert codes.shape == (30, space.encoding_size)
    assert set(codes.unique().tolist()) <= {0.0, 1.0}
    for arch, code in zip(archs, codes, strict=True):
        assert code.sum() == space.active(space.values(arch)).sum()
    distinct = {a.to_json() for a in archs}
    assert len({tuple(c.tolist()) for c in codes}) == len(distinct)


def test_sampling_is_seeded_and_follows_the_prior(spaces):
    space = spaces["rankitect"]
    a = space.sample_values(torch.Generator().manual_seed(7), 2000)
    b = space.sample_values(torch.Generator().manual_seed(7), 2000)
    c = space.sample_values(torch.Generator().manual_seed(8), 2000)
    assert torch.equal(a, b) and not torch.equal(a, c)
    conns = [i for i, d in enumerate(space.decisions) if d.kind == "conn"]
    assert a[:, conns].float().mean().item() == pytest.approx(0.8, abs=0.01)
    blocks = [i for i, d in enumerate(space.decisions) if d.kind == "block"]
    for i in blocks:
        card = space.decisions[i].cardinality
        freq = torch.bincount(a[:, i], minlength=card).float() / len(a)
        assert torch.allclose(freq, torch.full((card,), 1 / card), atol=0.04)
    one = space.sample(torch.Generator().manual_seed(7))
    assert one == space.decode(a[0])


def test_decode_rejects_out_of_range_values(spaces):
    space = spaces["generic"]
    values = space.sample_values(torch.Generator().manual_seed(0))
    values[0] = space.decisions[0].cardinality
    with pytest.raises(ValueError, match=space.decisions[0].name):
        space.decode(values)
    with pytest.raises(ValueError, match="decision values"):
        space.decode(values[:-1])


def test_size_counts_distinct_archs_by_enumeration():
    """Vary one Choice's decisions over their full product and count the distinct results."""
    space = tiny_space()
    base = space.sample_values(torch.Generator().manual_seed(0))
    counts = []
    for c in range(space.num_choices):
        mine = [i for i, d in enumerate(space.decisions) if d.choice == c]
        grids = torch.cartesian_prod(*[torch.arange(space.decisions[i].cardinality) for i in mine])
        seen = set()
        for row in grids:
            values = base.clone()
            values[mine] = row
            seen.add(space.decode(values).choices[c])
        counts.append(len(seen))
    assert space.choice_counts() == counts
    assert space.log10_size == pytest.approx(sum(torch.tensor(counts).double().log10().tolist()))


def test_largest_arch_is_at_least_as_costly_as_samples(spaces):
    for space in spaces.values():
        largest = space.largest()
        gen = torch.Generator().manual_seed(0)
        costs = [space.flops(space.sample(gen)) for _ in range(300)]
        assert space.flops(largest) >= max(costs)
        for ch, sp in zip(largest.choices, space.choices, strict=True):
            if ch.block not in ("pairwise_gating", "pairwise_sum"):
                assert ch.inputs == sp.candidates and ch.dim == sp.dims[ch.block][-1]


def test_all_connections_off_decodes_to_the_default_input(spaces):
    space = spaces["rankitect"]
    values = space.values(space.seed_arch())
    for c, (sp, idx) in enumerate(zip(space.choices, space.choice_decisions, strict=True)):
        if space.seed_arch().choices[c].block in ("pairwise_gating", "pairwise_sum"):
            continue
        off = values.clone()
        off[list(idx.conns)] = 0
        assert space.decode(off).choices[c].inputs == (sp.candidates[-1],)
