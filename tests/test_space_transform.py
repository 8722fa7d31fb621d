"""Merging and naive scaling of architectures (`rankitect.space.transform`, paper §4.2.3)."""

from __future__ import annotations

import warnings

import pytest
import torch

from rankitect.data import FeatureSpec
from rankitect.space import Arch, ChoiceArch, load_space, merge_archs, scale_arch
from rankitect.space.transform import widened_space_config

SPEC = FeatureSpec(n_dense=3, sparse_cardinalities=(5, 5))
# 3 Choices; candidates: c0 (0, 1), c1 (0, 1, 2), c2 (0, 1, 2, 3); D = 4.
SMALL = {
    "kind": "generic",
    "name": "small",
    "num_choices": 3,
    "blocks": ["linear", "embed_fc", "dot_product", "pairwise_gating", "pairwise_sum"],
    "distances": [1, 2],
    "dims": {"linear": [4, 8, 16], "embed_fc": [2, 3], "dot_product": [2, 3]},
    "embedding_dim": 4,
    "bottleneck": 8,
}


def lin(inputs, dim):
    return ChoiceArch("linear", inputs=tuple(inputs), dim=dim)


def pair(block, left, right):
    return ChoiceArch(block, left=left, right=right)


@pytest.fixture(scope="module")
def small():
    return load_space(SMALL, SPEC)


def test_merge_is_the_union_of_connections_at_the_largest_dims(small):
    a = Arch((lin([0], 4), pair("pairwise_gating", 2, 1), lin([3], 8)))
    b = Arch((lin([1], 8), lin([2], 16), lin([3], 4)))
    merged = merge_archs(small, [a, b])
    # c0: inputs {0} | {1}, dim max(4, 8); c1: a's pair (2, 1) and b's linear on 2 -> linear on
    # {1, 2} at b's dim 16 (a's pairwise output, the 2 x 4 sparse flat, is narrower); c2: max dim
    assert merged == Arch((lin([0, 1], 8), lin([1, 2], 16), lin([3], 8)))
    assert merge_archs(small, [b, a]) == merged
    assert merge_archs(small, [a, a]) == a
    assert merge_archs(small, [merged]) == merged


def test_pairwise_blocks_on_one_pair_stay_pairwise_and_the_majority_block_wins(small):
    head = (lin([0], 4), lin([2], 4))
    g, s = (Arch((*head, pair(b, 3, 1))) for b in ("pairwise_gating", "pairwise_sum"))
    assert merge_archs(small, [s, g, s]).choices[2] == pair("pairwise_sum", 3, 1)
    # a tie of equal cost goes to the space's block order (gating before sum)
    assert merge_archs(small, [s, g]).choices[2] == pair("pairwise_gating", 3, 1)


def test_different_pairs_become_a_linear_block_reading_every_source(small):
    head = (lin([0], 4), lin([2], 4))
    a = Arch((*head, pair("pairwise_gating", 3, 1)))
    b = Arch((*head, pair("pairwise_sum", 2, 0)))
    merged = merge_archs(small, [a, b])
    # widest replaced output: a's right input, the sparse embeddings flattened (2 x 4 = 8)
    assert merged.choices[2] == lin([0, 1, 2, 3], 8)
    assert set(merged.reachable()) == {0, 1, 2}


def test_a_tie_between_connection_blocks_goes_to_the_larger_flops(small):
    head = (lin([0], 4), lin([2], 4))
    a = Arch((*head, ChoiceArch("embed_fc", inputs=(3,), dim=2)))
    b = Arch((*head, ChoiceArch("dot_product", inputs=(3,), dim=3)))
    # one row (c1 projected: 2 * 4 * 4 FLOPs either way); EmbedFC 2*1*2*4 + classifier 2*2*4
    # = 32, dot product 4*1*3*4 + classifier 2*3 = 54
    assert merge_archs(small, [a, b]).choices[2] == b.choices[2]
    assert merge_archs(small, [b, a]).choices[2] == b.choices[2]


def test_unused_choices_do_not_vote(small):
    a = Arch((lin([0], 16), pair("pairwise_sum", 0, 0), lin([2], 4)))  # c1 unused
    b = Arch((lin([0], 4), lin([2], 8), lin([3], 4)))
    merged = merge_archs(small, [a, b])
    assert merged.choices[1] == lin([2], 8)
    assert merged.choices[0] == lin([0], 16)
    assert merged.choices[2] == lin([2, 3], 4)


def test_a_pairwise_only_choice_with_different_pairs_cannot_be_merged():
    cfg = {
        **SMALL,
        "blocks": [["linear"], ["linear"], ["pairwise_gating"]],
        "dims": {"linear": [4]},
    }
    space = load_space(cfg, SPEC)
    head = (lin([0], 4), lin([2], 4))
    a = Arch((*head, pair("pairwise_gating", 3, 1)))
    b = Arch((*head, pair("pairwise_gating", 2, 0)))
    with pytest.raises(ValueError, match="choice 2: .*different pairs"):
        merge_archs(space, [a, b])
    with pytest.raises(ValueError, match="architecture 1: choice 0, field 'dim'"):
        merge_archs(space, [a, Arch((lin([0], 8), *a.choices[1:]))])


@pytest.fixture(scope="module")
def grown():
    return load_space("rankitect", FeatureSpec(n_dense=4, sparse_cardinalities=(20,) * 8))


def test_merge_keeps_every_used_choice_and_is_commutative_on_random_archs(grown):
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        a, b, c = (grown.sample(g) for _ in range(3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # different blocks may cost less (tested below)
            merged = merge_archs(grown, [a, b, c])
            assert merge_archs(grown, [c, a, b]) == merged
        assert grown.validate(merged) is merged
        assert set(merged.reachable()) == set(a.reachable()) | set(b.reachable()) | set(
            c.reachable()
        )
        assert merge_archs(grown, [a, a]) == a


def test_merge_of_archs_with_the_same_blocks_costs_at_least_each_of_them(grown):
    g = torch.Generator().manual_seed(1)
    fixed = [i for i, d in enumerate(grown.decisions) if d.kind in ("block", "left", "right")]
    for _ in range(30):
        values = grown.sample_values(g, 2)
        values[1, fixed] = values[0, fixed]
        a, b = grown.decode(values[0]), grown.decode(values[1])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            merged = merge_archs(grown, [a, b])
        assert grown.flops(merged) >= max(grown.flops(a), grown.flops(b))
        assert grown.params(merged) >= max(grown.params(a), grown.params(b))


def test_merge_warns_when_different_blocks_make_it_cheaper(small):
    # a: c2 pairwise on the sparse embeddings (FC 8 -> 8 -> 8: 2*8*16 = 256 FLOPs), used alone;
    # b: c2 linear on the dense vector -> merged linear on {0, 1} at dim 8: 2*11*8 + 2*8 = 192
    head = (lin([0], 4), lin([2], 4))
    a = Arch((*head, pair("pairwise_gating", 1, 1)))
    b = Arch((*head, lin([0], 4)))
    with pytest.warns(UserWarning, match="fewer than input 0's"):
        merged = merge_archs(small, [a, b])
    assert merged.choices[2] == lin([0, 1], 8)
    assert small.flops(merged) == 2 * (3 + 8) * 8 + 2 * 8


def seed_like(small):
    return Arch(
        (
            lin([0], 4),
            ChoiceArch("embed_fc", inputs=(1, 2), dim=2),
            ChoiceArch("dot_product", inputs=(3,), dim=2),
        )
    )


def test_scale_snaps_up_to_an_option(small):
    arch = seed_like(small)
    out = scale_arch(small, arch, 1.5)
    # linear 4 * 1.5 = 6 -> 8; embed_fc and dot_product 2 * 1.5 = 3 -> 3
    assert [ch.dim for ch in out.arch.choices] == [8, 3, 3]
    assert out.space is small and out.clipped == ()
    assert [(d.choice, d.before, d.target, d.after) for d in out.dims] == [
        (0, 4, 6.0, 8),
        (1, 2, 3.0, 3),
        (2, 2, 3.0, 3),
    ]
    only = scale_arch(small, arch, 1.5, blocks=["linear"])
    assert [ch.dim for ch in only.arch.choices] == [8, 2, 2]


def test_scale_clips_to_the_largest_option_and_says_so(small):
    out = scale_arch(small, seed_like(small), 3)
    # linear 12 -> 16; embed_fc and dot_product 6 -> clipped to 3
    assert [ch.dim for ch in out.arch.choices] == [16, 3, 3]
    assert [(d.choice, d.block, d.target) for d in out.clipped] == [
        (1, "embed_fc", 6.0),
        (2, "dot_product", 6.0),
    ]


def test_widen_adds_the_scaled_dims_and_the_bottleneck(small):
    arch = seed_like(small)
    out = scale_arch(small, arch, 3, widen=True, bottleneck_factor=2)
    assert [ch.dim for ch in out.arch.choices] == [12, 6, 6]
    assert out.clipped == ()
    wide = out.space
    assert wide.name == "small_x3" and wide.bottleneck == 16
    assert wide.choices[0].dims == {
        "linear": (4, 8, 12, 16),
        "embed_fc": (2, 3),
        "dot_product": (2, 3),
    }
    assert wide.choices[1].dims["embed_fc"] == (2, 3, 6)
    assert wide.choices[2].dims["dot_product"] == (2, 3, 6)
    assert wide.validate(arch) is arch  # the old options are kept
    with pytest.raises(ValueError, match="choice 0, field 'dim'"):
        small.validate(out.arch)
    # FLOPs by the docs' table: linear 2*3*12; c1 EmbedFC on sparse (2 rows) + c0 projected (1
    # row): 2*12*4 + 2*3*6*4; c2 dot product on 6 rows: 4*6*6*4; classifier 2 * 6 * 6
    assert wide.flops(out.arch) == 2 * 3 * 12 + 2 * 12 * 4 + 2 * 3 * 6 * 4 + 4 * 6 * 6 * 4 + 72
    # the widened space round-trips through its `kind: widened` config
    rebuilt = load_space(widened_space_config(SMALL, small, wide), SPEC)
    assert rebuilt.choices == wide.choices and rebuilt.bottleneck == 16
    assert rebuilt.name == "small_x3"


def test_widen_rounds_half_up_and_keeps_the_seed(grown):
    out = scale_arch(grown, grown.seed_arch(), 1.1, widen=True)
    # linear 128 * 1.1 = 140.8 -> 141, dot product 8 * 1.1 = 8.8 -> 9 (already an option)
    assert out.arch.choices[0].dim == 141 and out.arch.choices[4].dim == 9
    assert out.space.seed_arch() == grown.seed_arch()
    assert out.space.bottleneck == grown.bottleneck


def test_scale_rejects_bad_arguments(small):
    arch = seed_like(small)
    with pytest.raises(ValueError, match="needs widen=True"):
        scale_arch(small, arch, 1.5, bottleneck_factor=2)
    with pytest.raises(ValueError, match="'pairwise_sum' has no dimension"):
        scale_arch(small, arch, 1.5, blocks=["pairwise_sum"])
    with pytest.raises(ValueError, match="positive"):
        scale_arch(small, arch, 0)


def test_other_space_types_delegate_or_are_refused():
    class OwnSpace:
        def merge(self, archs):
            return ("merged", tuple(archs))

        def scale(self, arch, factor, blocks, widen):
            return ("space", (arch, factor, blocks)) if widen else (arch, factor)

    own = OwnSpace()
    assert merge_archs(own, ["x", "y"]) == ("merged", ("x", "y"))
    out = scale_arch(own, "x", 2.0, blocks=["mlp"], widen=True)
    assert (out.space, out.arch, out.dims) == ("space", ("x", 2.0, ("mlp",)), None)
    assert scale_arch(own, "x", 2.0).arch == ("x", 2.0)
    with pytest.raises(TypeError, match="dict.*no merge"):
        merge_archs({}, ["x"])
