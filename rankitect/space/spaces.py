"""Search spaces from configuration: a generic space and the space grown from a seed model.

Shipped spaces are YAML files under ``conf/search_space/``; a user adds one by writing a YAML
file with the same keys (see docs/space.md) and passing its path to `load_space`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import rankitect
from rankitect.data.spec import FeatureSpec
from rankitect.models.blocks import is_positive_int
from rankitect.space.arch import DENSE, SPARSE, Arch, ChoiceArch, choice_input
from rankitect.space.blocks import (
    BLOCKS,
    DIM_BLOCKS,
    DOT,
    DOT_PRODUCT,
    EMBED_FC,
    LINEAR,
    PAIRWISE_BLOCKS,
    PAIRWISE_GATING,
    PAIRWISE_SUM,
    is_real,
)
from rankitect.space.dhen import DHENSpace, dhen_space
from rankitect.space.space import ChoiceSpec, SearchSpace, aligned_inputs

SEED_KEYS = {"name", "block", "inputs", "dim", "in_seed", "dropout"}
# Grown space: the block families a seed block is completed with (paper §4.2.1). DLRM's
# parameter-free dot stays alone: it reads aligned inputs only, by its own connection rule.
BLOCK_FAMILIES = ((DOT_PRODUCT, EMBED_FC), (LINEAR, PAIRWISE_GATING, PAIRWISE_SUM), (DOT,))


def _raw_candidates(spec: FeatureSpec) -> tuple[int, ...]:
    return tuple(k for k, n in ((DENSE, spec.n_dense), (SPARSE, spec.n_sparse)) if n > 0)


def _as_spec(spec: FeatureSpec | Mapping[str, Any]) -> FeatureSpec:
    return spec if isinstance(spec, FeatureSpec) else FeatureSpec.from_dict(dict(spec))


def generic_space(
    spec: FeatureSpec,
    *,
    num_choices: int,
    blocks: Sequence[str] | Sequence[Sequence[str]],
    distances: Sequence[int],
    dims: Mapping[str, Sequence[int]],
    embedding_dim: int,
    bottleneck: int,
    connection_prob: float = 0.8,
    name: str = "generic",
    layer: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """``num_choices`` Choices; each may read the raw inputs and the Choices ``distances`` back.

    ``blocks``: the blocks allowed in every Choice, or one list per Choice; ``dims``: output
    dimension options of each connection block; ``layer``: the blocks' `LayerSettings`.
    """
    if not is_positive_int(num_choices):
        raise ValueError(f"num_choices must be an int >= 1, got {num_choices!r}")
    if not distances or not all(is_positive_int(g) for g in distances):
        raise ValueError(f"distances must be positive ints, got {list(distances)}")
    per_choice = (
        [list(b) for b in blocks]
        if blocks and not isinstance(blocks[0], str)
        else [list(blocks)] * num_choices
    )
    if len(per_choice) != num_choices:
        raise ValueError(f"blocks gives {len(per_choice)} lists for {num_choices} Choices")
    raw = _raw_candidates(spec)
    choices = []
    for c, allowed in enumerate(per_choice):
        missing = [b for b in allowed if b in DIM_BLOCKS and b not in dims]
        if missing:
            raise ValueError(f"dims has no options for block {missing[0]!r}")
        earlier = sorted({choice_input(c - int(g)) for g in distances if c - int(g) >= 0})
        choices.append(
            ChoiceSpec(
                blocks=tuple(allowed),
                candidates=raw + tuple(earlier),
                dims={b: tuple(sorted(dims[b])) for b in allowed if b in DIM_BLOCKS},
            )
        )
    return SearchSpace(
        spec,
        choices,
        embedding_dim=embedding_dim,
        bottleneck=bottleneck,
        connection_prob=connection_prob,
        name=name,
        layer=layer,
    )


def scaled_options(base: int, low: float, high: float, count: int) -> tuple[int, ...]:
    """``count`` factors spread evenly over [low, high] times ``base``, rounded half up to ints
    >= 1; duplicates (possible for small ``base``) are dropped."""
    if count < 1 or not 0 < low <= high:
        raise ValueError(
            f"dimension scale needs 0 < low <= high and count >= 1, got {low}, {high}, {count}"
        )
    factors = [low + (high - low) * i / max(count - 1, 1) for i in range(count)]
    return tuple(sorted({max(1, int(base * f + 0.5)) for f in factors}))


def _parse_seed(spec: FeatureSpec, seed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Seed Choices with inputs resolved to seed positions (``-1`` dense, ``-2`` sparse).

    Raw inputs absent from ``spec`` are dropped, and so is any seed Choice left with no input
    (e.g. a bottom MLP on dense features when the data has none).
    """
    raw = {"dense": -1, "sparse": -2}
    present = {-1: spec.n_dense > 0, -2: spec.n_sparse > 0}
    names: dict[str, int | None] = {}
    out: list[dict[str, Any]] = []
    for i, item in enumerate(seed):
        name = str(item.get("name", f"seed{i}"))
        block = item.get("block")
        if block not in BLOCKS:
            raise ValueError(f"seed choice {name!r}: unknown block {block!r}; known: {BLOCKS}")
        if name in names or name in raw:
            raise ValueError(f"seed choice {name!r}: duplicate or reserved name")
        unknown = sorted(set(item) - SEED_KEYS)
        if unknown:
            raise ValueError(f"seed choice {name!r}: unknown key(s) {unknown}; known: {SEED_KEYS}")
        in_seed = item.get("in_seed", True)
        if not isinstance(in_seed, bool):
            raise ValueError(f"seed choice {name!r}: in_seed must be true or false")
        refs = []
        for ref in item.get("inputs", ()):
            if ref in raw:
                refs.append(raw[ref] if present[raw[ref]] else None)
            elif ref in names:
                refs.append(names[ref])
            else:
                raise ValueError(
                    f"seed choice {name!r}: input {ref!r} is not dense, sparse or an earlier "
                    "seed choice"
                )
        if block in PAIRWISE_BLOCKS:
            if len(refs) != 2:
                raise ValueError(
                    f"seed choice {name!r}: a pairwise block takes inputs [left, right]"
                )
            if None in refs:
                names[name] = None
                continue
        else:
            refs = sorted({r for r in refs if r is not None})
            if block == DOT and "dim" in item:
                raise ValueError(f"seed choice {name!r}: {DOT} has no dim")
            if block != DOT and "dim" not in item:
                raise ValueError(f"seed choice {name!r}: {block} needs a dim")
        dropout = item.get("dropout")
        if dropout is not None and not (is_real(dropout) and 0 <= dropout < 1):
            raise ValueError(f"seed choice {name!r}: dropout must be a number in [0, 1)")
        if not refs:
            names[name] = None
            continue
        if in_seed and any(r >= 0 and not out[r]["in_seed"] for r in refs):
            raise ValueError(f"seed choice {name!r}: reads a choice with in_seed: false")
        names[name] = len(out)
        out.append(
            {
                "name": name,
                "block": block,
                "inputs": refs,
                "dim": item.get("dim"),
                "in_seed": in_seed,
                "dropout": dropout,
            }
        )
    if not out or not out[-1]["in_seed"]:
        raise ValueError("the last seed choice (the output) must exist and be in_seed")
    ancestors = {len(out) - 1}
    for i in range(len(out) - 1, -1, -1):
        if i in ancestors:
            ancestors.update(r for r in out[i]["inputs"] if r >= 0)
    dead = [s["name"] for i, s in enumerate(out) if i not in ancestors and s["in_seed"]]
    if dead:
        raise ValueError(f"seed choices {dead} do not feed the last seed choice (the output)")
    return out


def _random_topological_order(seed: list[dict[str, Any]], generator: torch.Generator) -> list[int]:
    """A uniformly drawn ready node at each step: predecessors always come first."""
    preds = [{r for r in s["inputs"] if r >= 0} for s in seed]
    output = len(seed) - 1  # stays last: the last Choice feeds the classifier
    order: list[int] = []
    while len(order) < len(seed):
        ready = [
            i
            for i in range(len(seed))
            if i not in order and preds[i] <= set(order) and (i != output or len(order) == output)
        ]
        order.append(ready[int(torch.randint(len(ready), (1,), generator=generator))])
    return order


def grown_space(
    spec: FeatureSpec,
    *,
    seed: Sequence[Mapping[str, Any]],
    distances: Sequence[int] = (1, 2, 3, 6, 9),
    dim_scale: Mapping[str, Any] | None = None,
    embedding_dim: int,
    bottleneck: int,
    connection_prob: float = 0.8,
    permute_seed: int = 0,
    name: str = "grown",
    layer: Mapping[str, Any] | None = None,
    grown_from: str | None = None,
) -> SearchSpace:
    """The space grown from a seed model (paper §4.2.1).

    The seed is a list of Choices ``{name, block, inputs, dim}`` (inputs: ``dense``,
    ``sparse`` or earlier names; a pairwise block's inputs are ``[left, right]``); one with
    ``in_seed: false`` is grown into the space but left out of the seed model (e.g. a dot
    product that a DNN seed does not have, offered to the search). Growth:
    permute the Choices in a random DAG order (``permute_seed``); insert a copy right after
    every Choice holding EmbedFC or dot product; complete each Choice's block family
    ({dot product, EmbedFC}, {linear, pairwise gating, pairwise sum}); let each Choice read the
    raw inputs, the Choices at ``distances`` and its seed inputs; scale every dimension to
    ``dim_scale`` options (default 7 evenly from 0.5x to 1.25x the seed's).
    `SearchSpace.seed_arch` is the seed model (copies duplicate their original and are unused).
    ``layer``: the blocks' `LayerSettings`; ``grown_from``: the model config the seed equals
    (with the same ``layer`` settings its materialised seed *is* that model).
    """
    scale = {"low": 0.5, "high": 1.25, "options": 7, **(dim_scale or {})}
    parsed = _parse_seed(spec, seed)
    order = _random_topological_order(parsed, torch.Generator().manual_seed(int(permute_seed)))
    grown: list[tuple[int, bool]] = []  # (seed index, is a copy)
    for i in order:
        grown.append((i, False))
        if parsed[i]["block"] in (DOT_PRODUCT, EMBED_FC):
            grown.append((i, True))
    position = {i: p for p, (i, copy) in enumerate(grown) if not copy}
    raw = _raw_candidates(spec)

    def to_input(ref: int) -> int:
        return {-1: DENSE, -2: SPARSE}[ref] if ref < 0 else choice_input(position[ref])

    choices, seed_choices = [], []
    for p, (i, _copy) in enumerate(grown):
        s = parsed[i]
        family = next(f for f in BLOCK_FAMILIES if s["block"] in f)
        seed_inputs = [to_input(r) for r in s["inputs"]]
        near = {choice_input(p - int(g)) for g in distances if p - int(g) >= 0}
        if family == (DOT,):  # only inputs it can cut into rows where they lie
            aligned = aligned_inputs(raw, choices)
            near &= aligned
            if not set(seed_inputs) <= aligned:
                raise ValueError(
                    f"seed choice {s['name']!r}: {DOT} reads raw inputs and choices of linear, "
                    "EmbedFC and pairwise blocks only, not a dot product's scattered output"
                )
        candidates = tuple(sorted(set(raw) | near | set(seed_inputs)))
        base = s["dim"]  # a pairwise seed may give one for the linear of its family
        if base is None and any(b in DIM_BLOCKS for b in family):
            raise ValueError(f"seed choice {s['name']!r}: its grown blocks need a dim to scale")
        options = (
            scaled_options(
                int(base), float(scale["low"]), float(scale["high"]), int(scale["options"])
            )
            if base is not None
            else ()
        )
        if base is not None and int(base) not in options:
            raise ValueError(
                f"seed choice {s['name']!r}: dim {base} is not among its options {options}"
            )
        choices.append(
            ChoiceSpec(
                blocks=family,
                candidates=candidates,
                dims={b: options for b in family if b in DIM_BLOCKS},
                dropout=s["dropout"],
            )
        )
        if s["block"] in PAIRWISE_BLOCKS:
            seed_choices.append(ChoiceArch(s["block"], left=seed_inputs[0], right=seed_inputs[1]))
        else:
            dim = None if base is None else int(base)
            seed_choices.append(ChoiceArch(s["block"], inputs=tuple(seed_inputs), dim=dim))
    return SearchSpace(
        spec,
        choices,
        embedding_dim=embedding_dim,
        bottleneck=bottleneck,
        connection_prob=connection_prob,
        name=name,
        seed=Arch(tuple(seed_choices)),
        layer=layer,
        grown_from=grown_from,
    )


BUILD_SPACE_TARGET = "rankitect.space.build_space"
SPACE_KINDS = {"generic": generic_space, "grown": grown_space, "dhen": dhen_space}


def build_space(
    feature_spec: FeatureSpec | Mapping[str, Any], kind: str, **options: Any
) -> SearchSpace | DHENSpace:
    """Hydra target of ``conf/search_space/*.yaml``: ``kind`` (``generic`` | ``grown`` |
    ``dhen``) and that builder's keyword options."""
    if kind not in SPACE_KINDS:
        raise ValueError(f"unknown search space kind {kind!r}; known: {sorted(SPACE_KINDS)}")
    builder = SPACE_KINDS[kind]
    try:
        return builder(_as_spec(feature_spec), **options)
    except TypeError as err:
        # a key the builder does not take: raised by the call itself, not inside the builder
        if err.__traceback__ is None or err.__traceback__.tb_next is not None:
            raise
        known = sorted(set(inspect.signature(builder).parameters) - {"spec"})
        raise ValueError(f"unknown {kind} search space key: {err}; known: {known}") from None


def conf_dir() -> Path:
    """The shipped conf/ directory: inside the installed package, else the source checkout's."""
    package = Path(rankitect.__file__).parent
    return package / "conf" if (package / "conf").is_dir() else package.parent / "conf"


def shipped_spaces() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "search_space").glob("*.yaml"))


def load_space(
    name_or_yaml_path: str | Path | Mapping[str, Any], feature_spec: FeatureSpec | Mapping[str, Any]
) -> SearchSpace | DHENSpace:
    """A shipped space by name (``conf/search_space/<name>.yaml``), a user's YAML file by path,
    or an already loaded config mapping, built for ``feature_spec``."""
    if isinstance(name_or_yaml_path, Mapping | DictConfig):
        cfg = OmegaConf.create(dict(name_or_yaml_path))
    else:
        text = str(name_or_yaml_path)
        path = Path(text)
        if path.suffix not in (".yaml", ".yml"):
            path = conf_dir() / "search_space" / f"{text}.yaml"
            if not path.is_file():
                raise ValueError(f"unknown search space {text!r}; shipped: {shipped_spaces()}")
        elif not path.is_file():
            raise ValueError(f"search space file {text!r} does not exist")
        cfg = OmegaConf.load(path)
    options = OmegaConf.to_container(cfg, resolve=True)
    if options.setdefault("_target_", BUILD_SPACE_TARGET) == BUILD_SPACE_TARGET:
        options.setdefault(
            "name",
            Path(str(name_or_yaml_path)).stem
            if isinstance(name_or_yaml_path, str | Path)
            else "custom",
        )
    # The space's own _target_ (rankitect.space.build_space, or a builder of the user's taking
    # feature_spec and the config's keys) by hydra.utils.instantiate; a partial, so that the
    # builder's own errors (a bad value, an unknown key) reach the caller as they are, and not
    # recursive: a nested space config (a widened space's base) is the builder's to build.
    try:
        builder = instantiate(options, _partial_=True, _convert_="all", _recursive_=False)
    except InstantiationException as err:
        raise ValueError(
            f"a search space config has _target_: {BUILD_SPACE_TARGET} (or a builder of yours "
            f"taking feature_spec), got {options['_target_']!r}: "
            f"{str(err).splitlines()[0]}"
        ) from None
    return builder(feature_spec=feature_spec)
