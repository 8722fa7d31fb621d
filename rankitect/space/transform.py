"""Merging and naive scaling of architectures (paper §4.2.3).

The paper scales found Rankitect models up to DHEN's FLOPs in two ways: *naive scaling*
(multiply the linear dimensions of some block types, and the pairwise bottleneck) and
*merging* (every connection and block of any of several models, each block at its largest
dimension). Both are defined here for the Choice spaces of `SearchSpace`; a space type with
its own ``merge(archs)`` / ``scale(arch, factor, blocks, widen)`` methods (e.g. `DHENSpace`)
is delegated to.

Importing this module registers the ``widened`` kind of `build_space` (a space plus extra
dimension options and a new bottleneck), so a widened space can be written as a config and
trained with ``rankitect-train model=arch model.space=<that yaml>``.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankitect.data.spec import FeatureSpec
from rankitect.space.arch import Arch, ChoiceArch, choice_input
from rankitect.space.blocks import CONNECTION_BLOCKS, DIM_BLOCKS, LINEAR, PAIRWISE_BLOCKS
from rankitect.space.layout import arch_shapes
from rankitect.space.space import ChoiceSpec, SearchSpace
from rankitect.space.spaces import SPACE_KINDS, load_space

# Tolerance of "an option at or above dim * factor" against float error (16 * 1.1 etc.).
_EPS = 1e-9


def _own_method(space: Any, name: str) -> Any:
    method = getattr(space, name, None)
    if callable(method):
        return method
    if not isinstance(space, SearchSpace):
        raise TypeError(
            f"cannot {name} architectures of a {type(space).__name__}: it is not a Choice "
            f"SearchSpace and has no {name}() method of its own"
        )
    return None


# ---- merging ---------------------------------------------------------------------------------


def merge_archs(space: Any, archs: Sequence[Any]) -> Any:
    """The merged architecture of ``archs`` (paper §4.2.3, "Merging").

    Every connection and block of any input is in the merged model, each block at the largest
    dimension it has among the inputs. A Choice holds one block, so per Choice ``c``, looking
    only at the inputs in which ``c`` is *used* (reachable from the output; if none uses it,
    at all of them, and it stays unused):

    - if every one of them holds a pairwise block reading the same ``(left, right)``, the
      merged Choice is that pair with the pairwise block held by more of them (gating and sum
      cost the same; a tie goes to the space's block order);
    - otherwise it is a connection block reading the **union** of the inputs they read
      (a pairwise block's left and right count as its inputs): the connection block held by
      the most of them, at the largest ``dim`` among those holding it. Ties go to the block
      giving the larger merged FLOPs (decided Choice by Choice, in order), then to the
      space's block order. If none of them holds a connection block (pairwise blocks reading
      different pairs), it is ``linear``. A merged ``linear`` block is also at least as wide
      as the widest pairwise output it replaces (the smallest option that wide, else the
      largest option). A Choice that does not allow ``linear`` raises when it would need it,
      since one pair cannot hold every connection.

    Consequences (tested): the result is validated against the space; the Choices used by the
    merged architecture are exactly those used by any input; merging is commutative and
    ``merge([a, a]) == a``. If the inputs agree on the block (and pair) of every Choice they
    use, the merged FLOPs and dense parameters are at least each input's (every cost term
    grows with inputs and dims). Where they hold different blocks the FLOPs may be lower
    than an input's; a warning says so.

    Delegates to ``space.merge(archs)`` when the space type has it (e.g. `DHENSpace`).
    """
    archs = list(archs)
    if not archs:
        raise ValueError("merge needs at least one architecture")
    own = _own_method(space, "merge")
    if own is not None:
        return own(archs)
    for i, arch in enumerate(archs):
        try:
            space.validate(arch)
        except ValueError as err:
            raise ValueError(f"architecture {i}: {err}") from None
    used = [set(a.reachable()) for a in archs]
    shapes = [arch_shapes(space, a) for a in archs]
    candidates = []
    for c in range(space.num_choices):
        users = [i for i, u in enumerate(used) if c in u] or list(range(len(archs)))
        settings = [archs[i].choices[c] for i in users]
        widths = [shapes[i][choice_input(c)].flat(space.embedding_dim) for i in users]
        candidates.append(_merged_settings(space, c, settings, widths))
    current = [options[0] for options in candidates]
    for c, options in enumerate(candidates):
        if len(options) > 1:  # max keeps the first of equal FLOPs: the space's block order

            def flops_with(o: ChoiceArch, c: int = c) -> int:
                return space.flops(Arch((*current[:c], o, *current[c + 1 :])))

            current[c] = max(options, key=flops_with)
    merged = space.validate(Arch(tuple(current)))
    flops = space.flops(merged)
    below = [(i, f) for i, f in enumerate(space.flops(a) for a in archs) if f > flops]
    if below:
        warnings.warn(
            f"merged architecture has {flops:,} FLOPs, fewer than input {below[0][0]}'s "
            f"{below[0][1]:,}: the inputs hold different blocks in some Choice",
            stacklevel=2,
        )
    return merged


def _merged_settings(
    space: SearchSpace, c: int, settings: list[ChoiceArch], widths: list[int]
) -> list[ChoiceArch]:
    """The merged setting(s) of Choice ``c`` (more than one when blocks tie on count) from
    the inputs' ``settings`` of it and the flat widths of those settings' outputs."""
    sp = space.choices[c]
    first = settings[0]
    if all(
        s.block in PAIRWISE_BLOCKS and (s.left, s.right) == (first.left, first.right)
        for s in settings
    ):
        return _most_held(sp, settings, lambda b: ChoiceArch(b, left=first.left, right=first.right))
    inputs = tuple(sorted({k for s in settings for k in s.sources}))
    conn = [s for s in settings if s.block in CONNECTION_BLOCKS]
    if not conn and LINEAR not in sp.blocks:
        pairs = sorted({(s.left, s.right) for s in settings})
        raise ValueError(
            f"choice {c}: the architectures read different pairs {pairs} with pairwise blocks "
            f"and the Choice allows no linear block ({list(sp.blocks)}), so no one block holds "
            "every connection"
        )
    # A pairwise output is 2-D like a linear one: its width counts as a linear dim, so a
    # pairwise block replaced by linear keeps (at least) its width where the options allow.
    pair_widths = [w for s, w in zip(settings, widths, strict=True) if s.block in PAIRWISE_BLOCKS]

    def make(block: str) -> ChoiceArch:
        if block not in DIM_BLOCKS:  # the dot: every input any of them reads, no dim
            return ChoiceArch(block, inputs=inputs)
        options = sp.dims[block]
        want = [s.dim for s in conn if s.block == block]
        want += pair_widths if block == LINEAR else []
        dim = next((o for o in options if o >= max(want)), options[-1])
        return ChoiceArch(block, inputs=inputs, dim=dim)

    return _most_held(sp, conn, make) if conn else [make(LINEAR)]


def _most_held(sp: ChoiceSpec, settings: list[ChoiceArch], make) -> list[ChoiceArch]:
    counts = Counter(s.block for s in settings)
    top = max(counts.values())
    return [make(b) for b in sp.blocks if counts.get(b) == top]


# ---- naive scaling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaledDim:
    """One scaled dimension: Choice ``choice``'s ``block`` went from ``before`` to ``after``
    for a wanted ``target = before * factor``; ``clipped`` when the space had no option that
    large and ``after`` is its largest option."""

    choice: int
    block: str
    before: int
    target: float
    after: int
    clipped: bool


@dataclass(frozen=True)
class ScaleResult:
    """What `scale_arch` returns.

    ``arch``: the scaled architecture, an architecture of ``space``; ``space``: the input space
    (``widen=False``) or the widened one (``widen=True``); ``dims``: one record per scaled
    Choice, or ``None`` when the space's own ``scale`` method did the work (it reports none).
    """

    arch: Any
    space: Any
    dims: tuple[ScaledDim, ...] | None

    @property
    def clipped(self) -> tuple[ScaledDim, ...]:
        return tuple(d for d in self.dims or () if d.clipped)


def scale_arch(
    space: Any,
    arch: Any,
    factor: float,
    blocks: Iterable[str] = DIM_BLOCKS,
    widen: bool = False,
    bottleneck_factor: float = 1.0,
) -> ScaleResult:
    """Naive scaling (paper §4.2.3): multiply the ``dim`` of every Choice holding one of
    ``blocks`` (``linear``, ``embed_fc``, ``dot_product``; pairwise blocks have no dim) by
    ``factor``; every Choice is scaled, used or not.

    ``widen=False``: each dim becomes the smallest option of its Choice and block at or above
    ``dim * factor``, or the largest option if none is (recorded as ``clipped``); the space is
    unchanged, so ``bottleneck_factor`` must be 1. ``widen=True``: each dim becomes
    ``dim * factor`` rounded half up (at least 1), added to that Choice's options for that
    block in a new space named ``<name>_x<factor>``, whose pairwise bottleneck is the old one
    times ``bottleneck_factor``, rounded half up (the paper's 1.5x dims with a 2x bottleneck:
    ``factor=1.5, bottleneck_factor=2``). The new space keeps every old option, so it also
    holds the old architectures and the seed.

    Delegates to ``space.scale(arch, factor, blocks, widen)`` (plus ``bottleneck_factor=``
    when it is not 1) when the space type has it; its result (an arch, or ``(space, arch)``
    when widening) is wrapped in a `ScaleResult` with ``dims=None``.
    """
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"scale factor must be a positive number, got {factor}")
    if not (math.isfinite(bottleneck_factor) and bottleneck_factor > 0):
        raise ValueError(f"bottleneck factor must be a positive number, got {bottleneck_factor}")
    if bottleneck_factor != 1.0 and not widen:
        raise ValueError("the bottleneck is a parameter of the space: scaling it needs widen=True")
    blocks = tuple(blocks)
    own = _own_method(space, "scale")
    if own is not None:
        extra = {} if bottleneck_factor == 1.0 else {"bottleneck_factor": bottleneck_factor}
        out = own(arch, factor, blocks, widen, **extra)
        new_space, new_arch = out if widen else (space, out)
        return ScaleResult(new_arch, new_space, None)
    bad = [b for b in blocks if b not in DIM_BLOCKS]
    if bad:
        raise ValueError(
            f"scale: block {bad[0]!r} has no dimension to scale; scalable: {DIM_BLOCKS}"
        )
    arch = space.validate(arch)
    records, choices, added = [], [], {}
    for c, ch in enumerate(arch.choices):
        if ch.block not in blocks:
            choices.append(ch)
            continue
        target = ch.dim * factor
        options = space.choices[c].dims[ch.block]
        if widen:
            after = max(1, int(target + 0.5))
            if after not in options:
                added[c] = {ch.block: (after,)}
        else:
            after = next((o for o in options if o >= target - _EPS), options[-1])
        records.append(ScaledDim(c, ch.block, ch.dim, target, after, after < target - _EPS))
        choices.append(ChoiceArch(ch.block, inputs=ch.inputs, dim=after))
    new_space = space
    if widen:
        new_space = widen_space(
            space,
            added,
            bottleneck=max(1, int(space.bottleneck * bottleneck_factor + 0.5)),
            name=f"{space.name}_x{factor:g}",
        )
    return ScaleResult(new_space.validate(Arch(tuple(choices))), new_space, tuple(records))


# ---- widened spaces --------------------------------------------------------------------------


def widen_space(
    space: SearchSpace,
    add_dims: Mapping[int, Mapping[str, Iterable[int]]],
    *,
    bottleneck: int | None = None,
    name: str | None = None,
) -> SearchSpace:
    """A copy of ``space`` whose Choice ``c`` also offers the dims ``add_dims[c][block]``
    for ``block``, with pairwise ``bottleneck`` (default: unchanged)."""
    choices = list(space.choices)
    for c, per_block in add_dims.items():
        if not 0 <= c < len(choices):
            raise ValueError(f"add_dims: choice {c} is not in 0..{len(choices) - 1}")
        sp = choices[c]
        dims = dict(sp.dims)
        for block, extra in per_block.items():
            if block not in dims:
                raise ValueError(
                    f"add_dims: choice {c} has no dimension options for block {block!r}; "
                    f"it has {sorted(dims)}"
                )
            dims[block] = tuple(sorted({*dims[block], *(int(d) for d in extra)}))
        choices[c] = ChoiceSpec(
            blocks=sp.blocks, candidates=sp.candidates, dims=dims, dropout=sp.dropout
        )
    return SearchSpace(
        space.spec,
        choices,
        embedding_dim=space.embedding_dim,
        bottleneck=space.bottleneck if bottleneck is None else int(bottleneck),
        connection_prob=space.connection_prob,
        name=space.name if name is None else name,
        seed=space.seed_arch() if space.has_seed else None,
        layer=space.layer,
        grown_from=space.grown_from,
    )


def widened_space(
    spec: FeatureSpec,
    *,
    base: str | Mapping[str, Any],
    add_dims: Sequence[Mapping[str, Any]] = (),
    bottleneck: int | None = None,
    name: str = "widened",
) -> SearchSpace:
    """`build_space` builder of ``kind: widened``: the space ``base`` (a shipped name, a YAML
    path or a config mapping) with extra dimension options ``add_dims`` (a list of
    ``{choice, block, dims}``) and, if given, another ``bottleneck``."""
    base_space = load_space(dict(base) if isinstance(base, Mapping) else base, spec)
    if not isinstance(base_space, SearchSpace):
        raise ValueError(
            f"widened space: base {base_space.name!r} is a {type(base_space).__name__}, "
            "not a Choice space"
        )
    per_choice: dict[int, dict[str, list[int]]] = {}
    for i, item in enumerate(add_dims):
        missing = {"choice", "block", "dims"} - set(item)
        if missing:
            raise ValueError(f"widened space: add_dims[{i}] lacks {sorted(missing)}")
        per_choice.setdefault(int(item["choice"]), {}).setdefault(str(item["block"]), []).extend(
            item["dims"]
        )
    return widen_space(base_space, per_choice, bottleneck=bottleneck, name=name)


def widened_space_config(
    base_config: Mapping[str, Any], base: SearchSpace, widened: SearchSpace
) -> dict[str, Any]:
    """The ``kind: widened`` config of ``widened``, a widening of ``base`` (built from the
    config mapping ``base_config``): what `load_space` rebuilds ``widened`` from."""
    if base.num_choices != widened.num_choices:
        raise ValueError("widened space has another number of Choices than its base")
    add = []
    for c, (old, new) in enumerate(zip(base.choices, widened.choices, strict=True)):
        for block, options in new.dims.items():
            extra = sorted(set(options) - set(old.dims.get(block, ())))
            if extra:
                add.append({"choice": c, "block": block, "dims": extra})
    return {
        "_target_": "rankitect.space.build_space",
        "kind": "widened",
        "name": widened.name,
        "base": dict(base_config),
        "add_dims": add,
        "bottleneck": widened.bottleneck,
    }


def space_config(name_or_yaml_path: str | Path) -> dict[str, Any]:
    """The config mapping of a shipped space name or a space YAML file (with its ``name``)."""
    from omegaconf import OmegaConf

    from rankitect.space.spaces import conf_dir, shipped_spaces

    path = Path(str(name_or_yaml_path))
    if path.suffix not in (".yaml", ".yml"):
        path = conf_dir() / "search_space" / f"{name_or_yaml_path}.yaml"
        if not path.is_file():
            raise ValueError(
                f"unknown search space {str(name_or_yaml_path)!r}; shipped: {shipped_spaces()}"
            )
    elif not path.is_file():
        raise ValueError(f"search space file {str(path)!r} does not exist")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict):
        raise ValueError(f"search space file {str(path)!r} is not a mapping")
    cfg.setdefault("name", path.stem)
    return cfg


SPACE_KINDS.setdefault("widened", widened_space)
