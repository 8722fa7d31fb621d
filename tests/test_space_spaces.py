"""Shipped and user search spaces: loading, the grown-from-seed construction, the factory."""

import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rankitect.data import FeatureSpec
from rankitect.space import (
    Arch,
    DHENSpace,
    SearchSpace,
    SubnetModel,
    build_arch_model,
    grown_space,
    load_space,
)
from rankitect.space.spaces import conf_dir, scaled_options, shipped_spaces

SPEC = FeatureSpec(n_dense=13, sparse_cardinalities=(10,) * 10)
FRAPPE_LIKE = FeatureSpec(n_dense=0, sparse_cardinalities=(6,) * 10)
SEED_YAML = conf_dir() / "search_space" / "rankitect.yaml"


def test_shipped_spaces_load_by_name_path_mapping_and_hydra():
    assert {"generic", "rankitect"} <= set(shipped_spaces())
    for name in shipped_spaces():
        path = conf_dir() / "search_space" / f"{name}.yaml"
        by_name = load_space(name, SPEC)
        by_path = load_space(str(path), SPEC)
        by_mapping = load_space(OmegaConf.to_container(OmegaConf.load(path)), SPEC)
        by_hydra = instantiate(OmegaConf.load(path), feature_spec=SPEC)
        for other in (by_path, by_mapping, by_hydra):
            assert isinstance(other, SearchSpace | DHENSpace)
            assert other.decisions == by_name.decisions
            # the DHEN spaces have no Choices
            assert getattr(other, "choices", None) == getattr(by_name, "choices", None)


def test_unknown_space_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ValueError, match="generic"):
        load_space("no_such_space", SPEC)
    with pytest.raises(ValueError, match="does not exist"):
        load_space(str(tmp_path / "missing.yaml"), SPEC)


def test_user_yaml_space(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "kind: generic\n"
        "num_choices: 3\n"
        "blocks: [[linear], [dot_product, pairwise_sum], [linear, embed_fc]]\n"
        "distances: [1, 2]\n"
        "dims: {linear: [8, 16], dot_product: [2], embed_fc: [3]}\n"
        "embedding_dim: 4\n"
        "bottleneck: 8\n"
        "connection_prob: 0.5\n"
    )
    space = load_space(str(path), SPEC)
    assert space.name == "mine"
    assert [c.blocks for c in space.choices] == [
        ("linear",),
        ("dot_product", "pairwise_sum"),
        ("linear", "embed_fc"),
    ]
    assert space.choices[2].candidates == (0, 1, 2, 3)
    assert all(d.prior == (0.5, 0.5) for d in space.decisions if d.kind == "conn")
    path.write_text("_target_: my.own.builder\nkind: generic\n")
    with pytest.raises(ValueError, match="_target_"):
        load_space(str(path), SPEC)


def test_scaled_options_spread_from_half_to_five_quarters():
    assert scaled_options(64, 0.5, 1.25, 7) == (32, 40, 48, 56, 64, 72, 80)
    assert scaled_options(8, 0.5, 1.25, 7) == (4, 5, 6, 7, 8, 9, 10)
    assert scaled_options(2, 0.5, 1.25, 7) == (1, 2, 3)  # rounding collisions dropped


def test_rankitect_space_is_grown_from_its_seed():
    seed_doc = OmegaConf.to_container(OmegaConf.load(SEED_YAML))["seed"]
    space = load_space("rankitect", SPEC)
    seed = space.seed_arch()
    # the DLRM seed is a chain, so its only DAG order is the listed one; the dot product
    # Choice is followed by its copy
    blocks = [s["block"] for s in seed_doc]
    at = blocks.index("dot_product")
    assert [c.block for c in seed.choices] == blocks[: at + 1] + ["dot_product"] + blocks[at + 1 :]
    assert seed.choices[at + 1] == seed.choices[at]
    assert at + 1 not in seed.reachable()  # the copy is unused by the seed model
    assert len(seed.reachable()) == len(seed_doc)
    names = {s["name"]: i for i, s in enumerate(seed_doc)}
    position = [i if i <= at else i + 1 for i in range(len(seed_doc))]  # after the copy
    raw = {"dense": 0, "sparse": 1}
    for i, s in enumerate(seed_doc):
        ch = seed.choices[position[i]]
        want = sorted(raw[r] if r in raw else 2 + position[names[r]] for r in s["inputs"])
        assert list(ch.inputs) == want
        assert ch.dim == s["dim"]
    for p, (sp, ch) in enumerate(zip(space.choices, seed.choices, strict=True)):
        family = (
            {"dot_product", "embed_fc"}
            if ch.block == "dot_product"
            else {"linear", "pairwise_gating", "pairwise_sum"}
        )
        assert set(sp.blocks) == family
        near = {2 + p - g for g in (1, 2, 3, 6, 9) if p - g >= 0}
        assert {0, 1} | near <= set(sp.candidates) <= {0, 1} | near | set(ch.inputs)
        for options in sp.dims.values():
            assert len(options) == 7 and ch.dim in options
            assert options[0] == round(ch.dim * 0.5) and options[-1] == round(ch.dim * 1.25)


def test_seed_permutation_is_seeded_and_keeps_dag_order():
    seed = [
        {"name": "a", "block": "linear", "inputs": ["dense"], "dim": 8},
        {"name": "b", "block": "embed_fc", "inputs": ["sparse"], "dim": 4},
        {"name": "c", "block": "linear", "inputs": ["sparse"], "dim": 8},
        {"name": "d", "block": "pairwise_gating", "inputs": ["a", "c"], "dim": 8},
        {"name": "e", "block": "linear", "inputs": ["b", "d"], "dim": 8},
    ]
    orders = set()
    for permute_seed in range(12):
        space = grown_space(
            SPEC, seed=seed, embedding_dim=4, bottleneck=4, permute_seed=permute_seed
        )
        arch = space.seed_arch()  # validated against the space: a DAG in the grown order
        orders.add(tuple(ch.block for ch in arch.choices))
        again = grown_space(
            SPEC, seed=seed, embedding_dim=4, bottleneck=4, permute_seed=permute_seed
        )
        assert again.seed_arch() == arch
        assert arch.choices[-1].block == "linear" and len(arch.reachable()) == len(seed)
    assert len(orders) > 1


def test_seed_choices_without_inputs_are_dropped():
    space = load_space("rankitect", FRAPPE_LIKE)
    seed = space.seed_arch()
    assert [c.block for c in seed.choices][:2] == ["dot_product", "dot_product"]
    assert seed.choices[0].inputs == (1,)
    assert all(0 not in sp.candidates for sp in space.choices)


def test_seed_errors():
    with pytest.raises(ValueError, match="'x'.*unknown block"):
        grown_space(
            SPEC,
            seed=[{"name": "x", "block": "conv", "inputs": ["dense"]}],
            embedding_dim=4,
            bottleneck=4,
        )
    dead = [
        {"name": "a", "block": "linear", "inputs": ["dense"], "dim": 8},
        {"name": "b", "block": "linear", "inputs": ["sparse"], "dim": 8},
    ]
    with pytest.raises(ValueError, match="do not feed"):
        grown_space(SPEC, seed=dead, embedding_dim=4, bottleneck=4)


def test_build_arch_model_reads_and_validates_the_arch_file(tmp_path):
    space = load_space("rankitect", SPEC)
    good = tmp_path / "arch.json"
    good.write_text(space.seed_arch().to_json())
    model = build_arch_model(SPEC.to_dict(), "rankitect", str(good))
    assert isinstance(model, SubnetModel) and model.arch == space.seed_arch()
    logits = model(torch.randn(4, 13), torch.zeros(4, 10, dtype=torch.long))
    assert logits.shape == (4,)
    doc = json.loads(good.read_text())
    doc["choices"][2]["dim"] = 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"bad\.json.*choice 2, field 'dim'"):
        build_arch_model(SPEC, "rankitect", str(bad))
    with pytest.raises(ValueError, match="missing.json"):
        build_arch_model(SPEC, "rankitect", str(tmp_path / "missing.json"))
    assert Arch.from_json(good.read_text(), space) == model.arch
