"""The DHEN-shaped search space (paper §4.3, Table 1): every block dimension of a DHEN.

A `DHENSpace` fixes a DHEN's structure (layers, the interaction modules of each layer, the
number of head layers) and searches every block dimension: each module's inner width per
layer and each head width, ``len(dim_factors)`` (9) options per dimension around its base
width. Every decision has kind ``dim`` and no condition, so all are always active.

An architecture is a `DHENArch`; it materialises as the `rankitect.models.dhen.DHEN` with the
chosen widths. The weight-sharing supernet (`DHENSupernet`) is the DHEN at the largest widths:
hard masks slice its weights, soft masks scale the inner units by the expected prefix mask.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from rankitect.data.spec import FeatureSpec
from rankitect.models.dhen import DHEN, dhen_dense_params, dhen_flops, module_class
from rankitect.space.space import Decision, DecisionSpace

HEAD = "head"  # the name `scale` takes for the head widths
DEFAULT_FACTORS = (0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _error(where: str, field_name: str, reason: str) -> ValueError:
    return ValueError(f"{where}, field '{field_name}': {reason}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class DHENArch:
    """One DHEN: per layer the ``(module, inner width)`` pairs in module order, and the head's
    hidden widths. Build it with `DHENArch.of(layers=[{"mlp": 64, ...}, ...], head=[...])`.

    JSON: ``{"layers": [{"mlp": 64, "dot": 4, ...}, ...], "head": [400, 400]}``.
    """

    layers: tuple[tuple[tuple[str, int], ...], ...]
    head: tuple[int, ...]

    @classmethod
    def of(cls, layers: Sequence[Mapping[str, int]], head: Sequence[int]) -> DHENArch:
        return cls(tuple(tuple(layer.items()) for layer in layers), tuple(head))

    def layer_widths(self) -> list[dict[str, int]]:
        return [dict(layer) for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layer_widths(), "head": list(self.head)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> DHENArch:
        """Structural checks (no space): errors name the field, e.g. ``layer 1, field 'dot'``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a DHEN arch is an object with 'layers' and 'head', got {d!r}")
        unknown = sorted(set(d) - {"layers", "head"})
        if unknown:
            raise _error("arch", unknown[0], "unknown field")
        for key in ("layers", "head"):
            if not isinstance(d.get(key), list):
                raise _error("arch", key, f"expected a list, got {d.get(key)!r}")
        for i, layer in enumerate(d["layers"]):
            if not isinstance(layer, Mapping):
                raise _error(f"layer {i}", "layers", f"expected an object, got {layer!r}")
            for name, w in layer.items():
                if not _is_int(w) or w < 1:
                    raise _error(f"layer {i}", name, f"width must be an int >= 1, got {w!r}")
        for i, w in enumerate(d["head"]):
            if not _is_int(w) or w < 1:
                raise _error("head", f"head[{i}]", f"width must be an int >= 1, got {w!r}")
        return cls.of(d["layers"], d["head"])

    @classmethod
    def from_json(cls, text: str, space: DHENSpace | None = None) -> DHENArch:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON: {err}") from None
        arch = cls.from_dict(doc)
        return arch if space is None else space.validate(arch)


def dim_options(base: int, factors: Sequence[float]) -> tuple[int, ...]:
    """``base * factor`` rounded half up to ints >= 1, ascending; duplicates (small bases)
    dropped."""
    return tuple(sorted({max(1, int(base * f + 0.5)) for f in factors}))


class DHENSpace(DecisionSpace):
    """Every block dimension of a DHEN with ``num_layers`` layers.

    Args:
        spec: the data's features (rows ``n = N + [n_dense > 0]``).
        num_layers: DHEN layers.
        modules: the interaction modules of every layer and their base inner widths, e.g.
            ``{mlp: 256, dot: 8, attention: 16, cross: 32, conv: 4}``.
        head_units: base widths of the head's hidden layers.
        embedding_dim: ``D``.
        dim_factors: the options of a dimension are its base times these (rounded,
            deduplicated); must include 1.0 so the base DHEN (`seed_arch`) is in the space.
        emb_l2: embedding regulariser of the materialised models (`CTRModel.emb_l2`).
        options: explicit ``(per-layer {module: options}, per-head-layer options)`` instead of
            the factors (what `scale` with ``widen`` builds); they must hold the base widths.

    Decisions, in order: ``layer<l>.<module>`` for every layer and module, then
    ``head.<i>``; labels are the width options, priors uniform.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        num_layers: int,
        modules: Mapping[str, int],
        head_units: Sequence[int],
        embedding_dim: int,
        dim_factors: Sequence[float] = DEFAULT_FACTORS,
        emb_l2: float = 0.0,
        name: str = "dhen",
        options: tuple[Sequence[Mapping[str, Sequence[int]]], Sequence[Sequence[int]]]
        | None = None,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not modules:
            raise ValueError("modules must name at least one interaction module")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if spec.n_sparse < 1:
            raise ValueError("a DHEN needs at least one sparse field")
        factors = tuple(float(f) for f in dim_factors)
        if 1.0 not in factors or any(f <= 0 for f in factors):
            raise ValueError(f"dim_factors must be positive and include 1.0, got {list(factors)}")
        for m, w in modules.items():
            module_class(str(m))
            if not _is_int(w) or w < 1:
                raise ValueError(f"modules.{m}: base width must be an int >= 1, got {w!r}")
        self.spec = spec
        self.name = name
        self.num_layers = int(num_layers)
        self.module_names = tuple(str(m) for m in modules)
        self.embedding_dim = int(embedding_dim)
        self.dim_factors = factors
        self.emb_l2 = float(emb_l2)
        base_layers = [{m: int(modules[m]) for m in self.module_names}] * self.num_layers
        base_head = tuple(int(h) for h in head_units)
        if any(h < 1 for h in base_head):
            raise ValueError(f"head_units must be >= 1, got {list(base_head)}")
        self._base = DHENArch.of(base_layers, base_head)
        if options is None:
            layer_opts = [{m: dim_options(w, factors) for m, w in base_layers[0].items()}] * (
                self.num_layers
            )
            head_opts = [dim_options(h, factors) for h in base_head]
        else:  # explicit options (`scale` with ``widen``): they must hold the base widths
            layer_opts = [{m: tuple(o[m]) for m in self.module_names} for o in options[0]]
            head_opts = [tuple(o) for o in options[1]]
        self.layer_options: tuple[dict[str, tuple[int, ...]], ...] = tuple(layer_opts)
        self.head_options: tuple[tuple[int, ...], ...] = tuple(head_opts)
        decisions = [
            Decision(f"layer{i}.{m}", i, "dim", opts, tuple(1.0 / len(opts) for _ in opts))
            for i, layer in enumerate(self.layer_options)
            for m, opts in layer.items()
        ]
        decisions += [
            Decision(
                f"head.{i}", self.num_layers, "dim", opts, tuple(1.0 / len(opts) for _ in opts)
            )
            for i, opts in enumerate(self.head_options)
        ]
        self.decisions: tuple[Decision, ...] = tuple(decisions)
        self._seed = self.validate(self._base)

    # ---- value <-> arch ----------------------------------------------------------------------

    def validate(self, arch: DHENArch) -> DHENArch:
        """Return ``arch`` if it belongs to this space, else raise naming the layer and field."""
        if not isinstance(arch, DHENArch):
            raise ValueError(
                f"space {self.name!r} takes a DHENArch, got {type(arch).__name__} (an "
                "architecture of a Choice space?)"
            )
        if len(arch.layers) != self.num_layers:
            raise _error(
                "arch",
                "layers",
                f"the arch has {len(arch.layers)} layers, space {self.name!r} has "
                f"{self.num_layers}",
            )
        for i, (layer, opts) in enumerate(zip(arch.layers, self.layer_options, strict=True)):
            names = [m for m, _ in layer]
            for m in names:
                if m not in opts:
                    raise _error(f"layer {i}", m, f"not a module of this space: {list(opts)}")
            for m, options in opts.items():
                if m not in names:
                    raise _error(f"layer {i}", m, "missing")
                w = dict(layer)[m]
                if w not in options:
                    raise _error(f"layer {i}", m, f"{w} is not an option: {list(options)}")
        if len(arch.head) != len(self.head_options):
            raise _error(
                "arch",
                "head",
                f"the arch has {len(arch.head)} head widths, the space {len(self.head_options)}",
            )
        for i, (w, options) in enumerate(zip(arch.head, self.head_options, strict=True)):
            if w not in options:
                raise _error("head", f"head[{i}]", f"{w} is not an option: {list(options)}")
        # canonical module order, so equal architectures compare equal
        return DHENArch.of(
            [{m: dict(layer)[m] for m in self.module_names} for layer in arch.layers], arch.head
        )

    def arch_from_json(self, text: str) -> DHENArch:
        return DHENArch.from_json(text, space=self)

    def decode(self, values: Sequence[int] | torch.Tensor) -> DHENArch:
        vals = self.check_values(values)
        widths = [d.labels[v] for d, v in zip(self.decisions, vals, strict=True)]
        k = len(self.module_names)
        layers = [
            dict(zip(self.module_names, widths[i * k : (i + 1) * k], strict=True))
            for i in range(self.num_layers)
        ]
        return DHENArch.of(layers, widths[self.num_layers * k :])

    def values(self, arch: DHENArch) -> torch.Tensor:
        arch = self.validate(arch)
        widths = [w for layer in arch.layers for _, w in layer] + list(arch.head)
        return torch.tensor(
            [d.labels.index(w) for d, w in zip(self.decisions, widths, strict=True)],
            dtype=torch.long,
        )

    # ---- costs ---------------------------------------------------------------------------------

    def flops(self, arch: DHENArch) -> int:
        """FLOPs per example of the materialised DHEN (`DHEN.flops`)."""
        arch = self.validate(arch)
        return dhen_flops(self.spec, self.embedding_dim, arch.layer_widths(), arch.head)

    def params(self, arch: DHENArch) -> int:
        """Dense parameters (everything but the embedding table)."""
        arch = self.validate(arch)
        return dhen_dense_params(self.spec, self.embedding_dim, arch.layer_widths(), arch.head)

    def embedding_params(self, arch: DHENArch) -> int:
        self.validate(arch)
        return sum(self.spec.sparse_cardinalities) * self.embedding_dim

    def expected_flops(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Differentiable expected FLOPs under independent per-decision probabilities
        (``(..., cardinality)`` each). Exact: FLOPs are linear in every module width and
        multilinear in the head widths, so the expectation is the FLOPs at expected widths."""
        probs = self.check_weights(probs)
        widths = [
            (p * torch.tensor(d.labels, dtype=p.dtype, device=p.device)).sum(-1)
            for d, p in zip(self.decisions, probs, strict=True)
        ]
        k = len(self.module_names)
        layers = [
            dict(zip(self.module_names, widths[i * k : (i + 1) * k], strict=True))
            for i in range(self.num_layers)
        ]
        return dhen_flops(self.spec, self.embedding_dim, layers, widths[self.num_layers * k :])

    # ---- notable architectures and size --------------------------------------------------------

    @property
    def has_seed(self) -> bool:
        return True

    def seed_arch(self) -> DHENArch:
        """The base DHEN (every dimension at its base width)."""
        return self._seed

    def largest(self) -> DHENArch:
        return self.decode([d.cardinality - 1 for d in self.decisions])

    @cached_property
    def log10_size(self) -> float:
        return sum(math.log10(d.cardinality) for d in self.decisions)

    def __repr__(self) -> str:
        return (
            f"DHENSpace({self.name!r}, layers={self.num_layers}, modules={list(self.module_names)}"
            f", decisions={self.num_decisions}, size=10^{self.log10_size:.1f})"
        )

    # ---- models --------------------------------------------------------------------------------

    def build_supernet(self) -> DHENSupernet:
        return DHENSupernet(self)

    def materialize(
        self, arch: DHENArch, supernet: DHENSupernet | None = None, dropout: float = 0.0
    ) -> DHEN:
        """The `DHEN` of ``arch``; with ``supernet``, its weights are the supernet's leading
        slices (so it computes what the supernet computes under ``arch``'s hard masks)."""
        arch = self.validate(arch)
        model = DHEN(
            self.spec,
            embedding_dim=self.embedding_dim,
            layers=arch.layer_widths(),
            head_units=arch.head,
            dropout=dropout,
            emb_l2=self.emb_l2,
        )
        if supernet is not None:
            with torch.no_grad():
                model.load_state_dict(supernet.subnet_params(arch))
        return model

    # ---- merge and scale (`rankitect.space.transform`) ---------------------------------------

    def merge(self, archs: Sequence[DHENArch]) -> DHENArch:
        """Per-dimension maximum of ``archs``: a DHEN containing each of them."""
        if not archs:
            raise ValueError("merge needs at least one architecture")
        values = torch.stack([self.values(a) for a in archs])
        # options are ascending, so the largest value index is the largest width
        return self.decode(values.max(0).values)

    def scale(
        self, arch: DHENArch, factor: float, blocks: Sequence[str], widen: bool = False
    ) -> DHENArch | tuple[DHENSpace, DHENArch]:
        """Multiply the widths of the module kinds ``blocks`` (module names, or ``head`` for the
        head widths) by ``factor``, snapped up to the nearest option.

        Returns a `DHENArch` of this space, widths above the largest option clipped to it; with
        ``widen=True`` a tuple ``(space, arch)``: a new `DHENSpace` whose options also hold the
        scaled widths (no clipping), and the scaled arch in it.
        """
        if not factor > 0:
            raise ValueError(f"scale factor must be > 0, got {factor}")
        known = (*self.module_names, HEAD)
        unknown = [b for b in blocks if b not in known]
        if unknown:
            raise ValueError(f"scale: unknown block {unknown[0]!r}; this space has {known}")
        arch = self.validate(arch)

        def target(w: int, options: tuple[int, ...]) -> int:
            want = w * factor
            above = [o for o in options if o >= want - 1e-9]
            if above:
                return above[0]
            return max(1, math.ceil(want - 1e-9)) if widen else options[-1]

        layers, layer_opts = [], []
        for layer, opts in zip(arch.layer_widths(), self.layer_options, strict=True):
            new = {m: target(w, opts[m]) if m in blocks else w for m, w in layer.items()}
            layers.append(new)
            layer_opts.append({m: tuple(sorted({*opts[m], new[m]})) for m in opts})
        scaled_head = HEAD in blocks
        head = [
            target(w, o) if scaled_head else w
            for w, o in zip(arch.head, self.head_options, strict=True)
        ]
        if not widen:
            return DHENArch.of(layers, head)
        head_opts = [tuple(sorted({*o, w})) for o, w in zip(self.head_options, head, strict=True)]
        base = self._base
        space = DHENSpace(
            self.spec,
            num_layers=self.num_layers,
            modules=dict(base.layers[0]),
            head_units=base.head,
            embedding_dim=self.embedding_dim,
            dim_factors=self.dim_factors,
            emb_l2=self.emb_l2,
            name=f"{self.name}_x{factor:g}",
            options=(layer_opts, head_opts),
        )
        return space, space.validate(DHENArch.of(layers, head))


class DHENSupernet(nn.Module):
    """The DHEN at the space's largest widths, shared by every architecture.

    ``forward(dense, sparse, arch=None, soft=None) -> (B,)`` logits: ``arch`` slices every
    weight to the arch's widths (equal to the materialised DHEN with `subnet_params`);
    ``soft`` (one ``(cardinality,)`` or ``(B, cardinality)`` weight vector per decision)
    scales each module's inner units by ``m[u] = sum over options o with width_o > u of p_o``;
    neither runs the whole supernet.
    """

    def __init__(self, space: DHENSpace) -> None:
        super().__init__()
        self.space = space
        self.model = space.materialize(space.largest())
        self.model.emb_l2 = 0.0  # the supernet trains on the plain loss, as the Choice one
        for i, d in enumerate(space.decisions):
            prefix = (torch.arange(d.labels[-1]) < torch.tensor(d.labels)[:, None]).float()
            self.register_buffer(f"prefix_{i}", prefix, persistent=False)

    def forward(
        self,
        dense: torch.Tensor,
        sparse: torch.Tensor,
        arch: DHENArch | None = None,
        soft: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if arch is not None and soft is not None:
            raise ValueError("give either arch (hard masks) or soft (weights), not both")
        if arch is not None:
            arch = self.space.validate(arch)
            return self.model(dense, sparse, widths=(arch.layer_widths(), arch.head))
        if soft is None:
            return self.model(dense, sparse)
        masks = [
            w.reshape(-1, w.shape[-1]).to(self.prefix_0.dtype) @ getattr(self, f"prefix_{i}")
            for i, w in enumerate(self.space.check_weights(soft))
        ]
        k, n_layers = len(self.space.module_names), self.space.num_layers
        layers = [
            dict(zip(self.space.module_names, masks[i * k : (i + 1) * k], strict=True))
            for i in range(n_layers)
        ]
        return self.model(dense, sparse, masks=(layers, masks[n_layers * k :]))

    def subnet_params(self, arch: DHENArch) -> dict[str, torch.Tensor]:
        """State dict of ``arch``'s `DHEN`: the leading slices of the supernet's tensors."""
        arch = self.space.validate(arch)
        return self.model.sliced_state(arch.layer_widths(), arch.head)

    @contextmanager
    def checkpoint_layers(self) -> Iterator[DHENSupernet]:
        """Within the block, each DHEN layer is an activation-checkpointed region."""
        self.model.checkpoint_layers = True
        try:
            yield self
        finally:
            self.model.checkpoint_layers = False


def dhen_space(spec: FeatureSpec, **options: Any) -> DHENSpace:
    """`build_space` builder of ``kind: dhen`` (see `DHENSpace` for the options)."""
    return DHENSpace(spec, **options)
