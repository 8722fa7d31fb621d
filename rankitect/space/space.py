"""`SearchSpace`: the list of named categorical decisions that define an `Arch`.

Per Choice ``c`` the decisions are, in this order:

- ``c<c>.block``: which allowed block (one-hot "binary output mask");
- ``c<c>.dim.<block>``: output dimension of each allowed block that has one, over its options
  (one-hot; the supernet turns it into a leading-ones prefix mask); active when that block is
  chosen;
- ``c<c>.in.<input>``: one on/off decision per candidate input ("K independent binary masks",
  value 1 = on, prior probability ``connection_prob``); active when a connection block is
  chosen. All-off decodes to the Choice's *default input* (its last candidate, the nearest
  earlier source; for the dot block the sparse embeddings, also read when one other input
  alone is on), so every value vector decodes to a valid `Arch`;
- ``c<c>.left`` / ``c<c>.right``: the pair read by a pairwise block (one-hot over the
  candidates); active when a pairwise block is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from rankitect.data.spec import FeatureSpec
from rankitect.models.blocks import is_positive_int
from rankitect.space.arch import (
    DENSE,
    SPARSE,
    Arch,
    ChoiceArch,
    arch_error,
    choice_input,
    input_name,
)
from rankitect.space.blocks import (
    BLOCKS,
    CONNECTION_BLOCKS,
    DIM_BLOCKS,
    DOT,
    EMBED_FC,
    LINEAR,
    PAIRWISE_BLOCKS,
    LayerSettings,
    is_real,
)


@dataclass(frozen=True)
class ChoiceSpec:
    """What one Choice may do: its allowed blocks, candidate inputs and dimension options.

    ``candidates``: ascending global input indices (0 dense, 1 sparse, 2 + i Choice i);
    ``dims``: for every allowed block with a dimension, its ascending output-dimension
    options; ``dropout``: on this Choice's output instead of the space's ``layer.dropout``
    (None: the space's), e.g. 0 for a DLRM seed's bottom MLP and interaction.
    """

    blocks: tuple[str, ...]
    candidates: tuple[int, ...]
    dims: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dropout: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "candidates", tuple(int(k) for k in self.candidates))
        for b, opts in self.dims.items():  # before int(), which would truncate 2.5 or fail on NaN
            if not all(is_positive_int(d) for d in opts):
                raise ValueError(f"ChoiceSpec.dims[{b!r}] must be ints >= 1: {list(opts)}")
        object.__setattr__(
            self, "dims", {b: tuple(int(d) for d in opts) for b, opts in self.dims.items()}
        )
        if not self.blocks:
            raise ValueError("ChoiceSpec.blocks must not be empty")
        unknown = [b for b in self.blocks if b not in BLOCKS]
        if unknown:
            raise ValueError(f"ChoiceSpec.blocks: unknown block {unknown[0]!r}; known: {BLOCKS}")
        if len(set(self.blocks)) != len(self.blocks):
            raise ValueError(f"ChoiceSpec.blocks has duplicates: {self.blocks}")
        cands = self.candidates
        if not cands or list(cands) != sorted(set(cands)) or cands[0] < 0:
            raise ValueError(f"ChoiceSpec.candidates must be ascending, unique, >= 0: {cands}")
        need = {b for b in self.blocks if b in DIM_BLOCKS}
        if set(self.dims) != need:
            raise ValueError(
                f"ChoiceSpec.dims must give options for exactly {sorted(need)}, "
                f"got {sorted(self.dims)}"
            )
        for b, opts in self.dims.items():
            if not opts or list(opts) != sorted(set(opts)) or opts[0] < 1:
                raise ValueError(f"ChoiceSpec.dims[{b!r}] must be ascending, unique, >= 1: {opts}")
        if DOT in self.blocks and len(self.blocks) > 1:  # its own connection rule (below)
            raise ValueError(f"ChoiceSpec.blocks: {DOT} is allowed alone, got {self.blocks}")
        if self.dropout is not None and not (is_real(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"ChoiceSpec.dropout must be a number in [0, 1), got {self.dropout!r}")

    @property
    def default_input(self) -> int:
        """Input taken when every connection decision is off: the nearest earlier source; for
        the dot block the sparse embeddings, also taken when one other input alone is on (a
        dot product needs two rows; `SearchSpace` checks there are at least two of them)."""
        if DOT in self.blocks:
            return SPARSE
        return self.candidates[-1]

    def inputs_read(self, on: Sequence[int]) -> tuple[int, ...]:
        """The inputs a connection block reads given the candidates switched ``on``."""
        d = self.default_input
        if d not in on and len(on) <= (1 if DOT in self.blocks else 0):
            return tuple(sorted((*on, d)))
        return tuple(on)


def aligned_inputs(raw: Sequence[int], choices: Sequence[ChoiceSpec]) -> frozenset[int]:
    """Inputs whose features always sit at the front of their largest flat layout: the raw
    inputs, and Choices of linear, EmbedFC and pairwise blocks over aligned inputs (a dot
    product's outputs are scattered over its largest grid), which the dot block can cut
    into rows."""
    aligned = set(raw)
    for c, ch in enumerate(choices):
        pairwise = any(b in PAIRWISE_BLOCKS for b in ch.blocks)
        if set(ch.blocks) <= {LINEAR, EMBED_FC, *PAIRWISE_BLOCKS} and (
            not pairwise or set(ch.candidates) <= aligned
        ):
            aligned.add(choice_input(c))
    return frozenset(aligned)


@dataclass(frozen=True)
class Decision:
    """One categorical decision: value ``v`` means ``labels[v]``.

    ``kind``: ``block`` | ``dim`` | ``conn`` | ``left`` | ``right``. ``condition``: ``None``
    (always active) or ``(j, values)``: active iff decision ``j`` (the Choice's block
    decision) takes one of ``values``. ``prior``: the sampling distribution of `sample`
    (uniform, except ``conn`` decisions: ``(1 - p, p)``, value 1 = on).
    """

    name: str
    choice: int
    kind: str
    labels: tuple[Any, ...]
    prior: tuple[float, ...]
    condition: tuple[int, frozenset[int]] | None = None
    input: int | None = None  # the candidate input of a ``conn`` decision

    @property
    def cardinality(self) -> int:
        return len(self.labels)

    def is_active(self, values: Sequence[int]) -> bool:
        """Whether this decision affects the architecture, given all decision values."""
        return self.condition is None or int(values[self.condition[0]]) in self.condition[1]


@dataclass(frozen=True)
class ChoiceDecisions:
    """Indices into `SearchSpace.decisions` of one Choice's decisions; ``conns[t]`` is the
    on/off decision of candidate ``t``; ``left``/``right`` are None without pairwise blocks."""

    block: int
    dims: dict[str, int]
    conns: tuple[int, ...]
    left: int | None
    right: int | None


class DecisionSpace:
    """What every search space offers the searches: a flat list of categorical ``decisions``
    and the operations defined by them alone (sampling, encodings, weight vectors).

    Subclasses set ``decisions`` and ``name`` and implement ``decode`` (values -> arch),
    ``values`` (its inverse), ``validate``, ``flops``/``params``/``expected_flops`` and
    ``seed_arch``; `SearchSpace` (Choices) and `rankitect.space.dhen.DHENSpace` do.
    """

    decisions: tuple[Decision, ...]
    name: str

    @property
    def num_decisions(self) -> int:
        return len(self.decisions)

    @cached_property
    def encoding_size(self) -> int:
        return sum(d.cardinality for d in self.decisions)

    def check_values(self, values: Sequence[int] | torch.Tensor) -> list[int]:
        """Decision values as ints, one per decision and each in range (else a ValueError
        naming the decision): what `decode` accepts."""
        vals = [int(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
        if len(vals) != self.num_decisions:
            raise ValueError(f"expected {self.num_decisions} decision values, got {len(vals)}")
        for d, v in zip(self.decisions, vals, strict=True):
            if not 0 <= v < d.cardinality:
                raise ValueError(f"decision {d.name}: value {v} outside 0..{d.cardinality - 1}")
        return vals

    def active(self, values: torch.Tensor) -> torch.Tensor:
        """Bool mask of the decisions that matter, for values ``(..., num_decisions)``."""
        mask = torch.ones(values.shape, dtype=torch.bool, device=values.device)
        for i, d in enumerate(self.decisions):
            if d.condition is not None:
                j, allowed = d.condition
                allowed = torch.tensor(sorted(allowed), device=values.device)
                mask[..., i] = torch.isin(values[..., j], allowed)
        return mask

    def encode(self, arch: Arch) -> torch.Tensor:
        """Fixed-length float ``(encoding_size,)``: one-hot per active decision, zeros if inactive.

        Blocks are laid out in decision order, each ``cardinality`` long.
        """
        vals = self.values(arch)
        act = self.active(vals)
        out = torch.zeros(self.encoding_size)
        offset = 0
        for d, v, a in zip(self.decisions, vals.tolist(), act.tolist(), strict=True):
            if a:
                out[offset + v] = 1.0
            offset += d.cardinality
        return out

    # ---- sampling ------------------------------------------------------------------------------

    @cached_property
    def _prior_cdf(self) -> torch.Tensor:
        width = max(d.cardinality for d in self.decisions)
        cdf = torch.ones(self.num_decisions, width, dtype=torch.float64)
        for i, d in enumerate(self.decisions):
            cdf[i, : d.cardinality] = torch.tensor(d.prior, dtype=torch.float64).cumsum(0)
        return cdf

    def sample_values(self, generator: torch.Generator, n: int | None = None) -> torch.Tensor:
        """Independent draws of every decision from its prior.

        Returns int64 ``(num_decisions,)``, or ``(n, num_decisions)`` when ``n`` is given.
        """
        shape = (1 if n is None else n, self.num_decisions)
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        cards = torch.tensor([d.cardinality for d in self.decisions])
        vals = (u.unsqueeze(-1) >= self._prior_cdf).sum(-1).clamp_max(cards - 1)
        return vals[0] if n is None else vals

    def sample(self, generator: torch.Generator) -> Arch:
        """A random architecture: every decision drawn from its prior, then decoded."""
        return self.decode(self.sample_values(generator))

    # ---- decision weights for the supernet and DNAS ----------------------------------------

    def check_weights(
        self, weights: Sequence[torch.Tensor], batched: bool = True
    ) -> list[torch.Tensor]:
        """Check per-decision weight vectors: ``(cardinality,)``, or ``(B, cardinality)`` when
        ``batched`` (one distribution per example, e.g. per-example Gumbel-softmax samples)."""
        if len(weights) != self.num_decisions:
            raise ValueError(f"expected {self.num_decisions} weight vectors, got {len(weights)}")
        out = []
        for d, w in zip(self.decisions, weights, strict=True):
            w = torch.as_tensor(w)
            ok_dims = (1, 2) if batched else (1,)
            if w.dim() not in ok_dims or w.shape[-1] != d.cardinality:
                expected = f"({d.cardinality},)" + (f" or (B, {d.cardinality})" if batched else "")
                raise ValueError(
                    f"decision {d.name}: weights of shape {tuple(w.shape)}, expected {expected}"
                )
            out.append(w)
        return out

    def priors(self) -> list[torch.Tensor]:
        """The sampling distribution of every decision, as a list of probability vectors."""
        return [torch.tensor(d.prior) for d in self.decisions]

    def one_hot(self, values: Sequence[int] | torch.Tensor) -> list[torch.Tensor]:
        """Per-decision one-hot float vectors (the soft weights equal to a hard architecture)."""
        vals = torch.as_tensor(values).tolist()
        return [
            torch.nn.functional.one_hot(torch.tensor(v), d.cardinality).float()
            for d, v in zip(self.decisions, vals, strict=True)
        ]

    def all_ones(self) -> list[torch.Tensor]:
        """Weights that enable the whole supernet: every block, connection and pair, full dims."""
        out = []
        for d in self.decisions:
            if d.kind in ("dim", "conn"):
                # dims: all mass on the largest option -> all-ones prefix mask; conn: on
                out.append(
                    torch.nn.functional.one_hot(
                        torch.tensor(d.cardinality - 1), d.cardinality
                    ).float()
                )
            else:
                out.append(torch.ones(d.cardinality))
        return out


class SearchSpace(DecisionSpace):
    """Choices, their decisions, and the architecture-level operations on them.

    ``spec`` fixes the raw inputs (dense vector absent when ``n_dense == 0``, sparse
    embeddings absent when ``n_sparse == 0``); ``embedding_dim`` is D of every 3-D tensor;
    ``bottleneck`` is the middle width of the pairwise projections ``FC_ij``; ``layer`` is how
    every block normalises, activates, initialises and regularises (`LayerSettings`), alike in
    the supernet, the subnets and a retrain; ``grown_from`` names the model config
    (``conf/model/<name>.yaml``) that the seed architecture equals, if any.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        choices: Sequence[ChoiceSpec],
        *,
        embedding_dim: int,
        bottleneck: int,
        connection_prob: float = 0.8,
        name: str = "custom",
        seed: Arch | None = None,
        layer: LayerSettings | Mapping[str, Any] | None = None,
        grown_from: str | None = None,
    ) -> None:
        if not is_positive_int(embedding_dim):
            raise ValueError(f"embedding_dim must be an int >= 1, got {embedding_dim!r}")
        if not is_positive_int(bottleneck):
            raise ValueError(f"bottleneck must be an int >= 1, got {bottleneck!r}")
        if not 0.0 < connection_prob < 1.0:
            raise ValueError(f"connection_prob must be in (0, 1), got {connection_prob}")
        if not choices:
            raise ValueError("a SearchSpace needs at least one Choice")
        self.spec = spec
        self.choices: tuple[ChoiceSpec, ...] = tuple(choices)
        self.embedding_dim = int(embedding_dim)
        self.bottleneck = int(bottleneck)
        self.connection_prob = float(connection_prob)
        self.name = name
        self.layer = LayerSettings.from_config(layer)
        self.grown_from = grown_from
        raw = self.raw_inputs
        for c, ch in enumerate(self.choices):
            bad = [k for k in ch.candidates if k not in raw and not 2 <= k < choice_input(c)]
            if bad:
                raise ValueError(
                    f"choice {c}: candidate input {bad[0]} ({input_name(bad[0])}) is neither a "
                    f"present raw input {raw} nor an earlier Choice"
                )
        self.aligned_inputs = aligned_inputs(raw, self.choices)
        for c, ch in enumerate(self.choices):
            if DOT in ch.blocks:
                self._check_dot_choice(c, ch)
        self.decisions, self.choice_decisions = self._build_decisions()
        self._seed = None if seed is None else self.validate(seed)

    # ---- structure -------------------------------------------------------------------------

    @property
    def raw_inputs(self) -> tuple[int, ...]:
        """Global indices of the raw inputs present in ``spec``."""
        return tuple(
            k for k, n in ((DENSE, self.spec.n_dense), (SPARSE, self.spec.n_sparse)) if n > 0
        )

    @property
    def num_choices(self) -> int:
        return len(self.choices)

    def _check_dot_choice(self, c: int, ch: ChoiceSpec) -> None:
        """The dot block cuts its inputs into rows where they lie, so it reads aligned inputs
        only, and its default input (the sparse embeddings) must give two rows."""
        if SPARSE not in ch.candidates or self.spec.n_sparse < 2:
            raise ValueError(
                f"choice {c}: the {DOT} block needs the sparse embeddings (at least 2 fields) "
                "among its candidates, its default input"
            )
        bad = [k for k in ch.candidates if k not in self.aligned_inputs]
        if bad:
            raise ValueError(
                f"choice {c}: the {DOT} block cannot read candidate {bad[0]} "
                f"({input_name(bad[0])}), whose features may be a dot product's, scattered "
                "over its largest layout"
            )

    def _build_decisions(self) -> tuple[tuple[Decision, ...], tuple[ChoiceDecisions, ...]]:
        decisions: list[Decision] = []
        per_choice = []
        p = self.connection_prob

        def add(**kw: Any) -> int:
            labels = kw["labels"]
            kw.setdefault("prior", tuple(1.0 / len(labels) for _ in labels))
            decisions.append(Decision(**kw))
            return len(decisions) - 1

        for c, ch in enumerate(self.choices):
            block = add(name=f"c{c}.block", choice=c, kind="block", labels=ch.blocks)
            dims = {
                b: add(
                    name=f"c{c}.dim.{b}",
                    choice=c,
                    kind="dim",
                    labels=ch.dims[b],
                    condition=(block, frozenset({ch.blocks.index(b)})),
                )
                for b in ch.blocks
                if b in DIM_BLOCKS
            }
            conn_values = frozenset(i for i, b in enumerate(ch.blocks) if b in CONNECTION_BLOCKS)
            conns = (
                tuple(
                    add(
                        name=f"c{c}.in.{input_name(k)}",
                        choice=c,
                        kind="conn",
                        labels=(False, True),
                        prior=(round(1.0 - p, 12), p),  # no 0.19999999999999996
                        condition=(block, conn_values),
                        input=k,
                    )
                    for k in ch.candidates
                )
                if conn_values
                else ()
            )
            pair_values = frozenset(i for i, b in enumerate(ch.blocks) if b in PAIRWISE_BLOCKS)
            left = right = None
            if pair_values:
                left, right = (
                    add(
                        name=f"c{c}.{side}",
                        choice=c,
                        kind=side,
                        labels=ch.candidates,
                        condition=(block, pair_values),
                    )
                    for side in ("left", "right")
                )
            per_choice.append(ChoiceDecisions(block, dims, conns, left, right))
        return tuple(decisions), tuple(per_choice)

    # ---- validation and the value <-> Arch maps ----------------------------------------------

    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` if it belongs to this space, else raise naming the Choice and field."""
        if len(arch.choices) != self.num_choices:
            raise ValueError(
                f"field 'choices': the Arch has {len(arch.choices)} Choices, "
                f"space {self.name!r} has {self.num_choices}"
            )
        for c, (ch, sp) in enumerate(zip(arch.choices, self.choices, strict=True)):
            if ch.block not in sp.blocks:
                raise arch_error(
                    c, "block", f"{ch.block!r} is not allowed here; allowed: {sp.blocks}"
                )
            fields = (("left", ch.left), ("right", ch.right))
            fields = fields if ch.block in PAIRWISE_BLOCKS else (("inputs", k) for k in ch.inputs)
            for name, k in fields:
                if k not in sp.candidates:
                    raise arch_error(
                        c,
                        name,
                        f"input {k} ({input_name(k)}) is not a candidate; candidates: "
                        f"{list(sp.candidates)}",
                    )
            if ch.block in DIM_BLOCKS and ch.dim not in sp.dims[ch.block]:
                raise arch_error(
                    c, "dim", f"{ch.dim} is not an option of {ch.block}: {list(sp.dims[ch.block])}"
                )
            if ch.block == DOT and sp.inputs_read(ch.inputs) != ch.inputs:
                raise arch_error(
                    c,
                    "inputs",
                    f"{DOT} reads two rows or more: {list(ch.inputs)} needs the sparse "
                    f"embeddings ({SPARSE}) or another input",
                )
        return arch

    def arch_from_json(self, text: str) -> Arch:
        """Parse and validate an Arch JSON document."""
        return Arch.from_json(text, space=self)

    def decode(self, values: Sequence[int] | torch.Tensor) -> Arch:
        """Decision values (one int per decision) -> `Arch`. Inactive values are ignored."""
        vals = self.check_values(values)
        out = []
        for sp, idx in zip(self.choices, self.choice_decisions, strict=True):
            block = sp.blocks[vals[idx.block]]
            if block in PAIRWISE_BLOCKS:
                out.append(
                    ChoiceArch(
                        block,
                        left=sp.candidates[vals[idx.left]],
                        right=sp.candidates[vals[idx.right]],
                    )
                )
            else:
                on = tuple(k for k, j in zip(sp.candidates, idx.conns, strict=True) if vals[j] == 1)
                dim = sp.dims[block][vals[idx.dims[block]]] if block in DIM_BLOCKS else None
                out.append(ChoiceArch(block, inputs=sp.inputs_read(on), dim=dim))
        return Arch(tuple(out))

    def values(self, arch: Arch) -> torch.Tensor:
        """Inverse of `decode`: int64 ``(num_decisions,)``; inactive decisions are 0."""
        self.validate(arch)
        vals = [0] * self.num_decisions
        for ch, sp, idx in zip(arch.choices, self.choices, self.choice_decisions, strict=True):
            vals[idx.block] = sp.blocks.index(ch.block)
            if ch.block in PAIRWISE_BLOCKS:
                vals[idx.left] = sp.candidates.index(ch.left)
                vals[idx.right] = sp.candidates.index(ch.right)
            else:
                if ch.block in DIM_BLOCKS:
                    vals[idx.dims[ch.block]] = sp.dims[ch.block].index(ch.dim)
                for k, j in zip(sp.candidates, idx.conns, strict=True):
                    vals[j] = int(k in ch.inputs)
        return torch.tensor(vals, dtype=torch.long)

    # ---- costs ---------------------------------------------------------------------------------

    def flops(self, arch: Arch) -> int:
        """FLOPs per example of the materialised model (2 per multiply-add of matmuls)."""
        from rankitect.space.cost import arch_cost

        return arch_cost(self, self.validate(arch)).flops

    def params(self, arch: Arch) -> int:
        """Dense parameters of the materialised model (everything but the embedding table)."""
        from rankitect.space.cost import arch_cost

        return arch_cost(self, self.validate(arch)).params

    def embedding_params(self, arch: Arch) -> int:
        """Parameters of the sparse embedding table: the same for every architecture that
        reads the embeddings, 0 for one that does not."""
        if SPARSE not in self.validate(arch).inputs_read():
            return 0
        return sum(self.spec.sparse_cardinalities) * self.embedding_dim

    def expected_flops(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Differentiable expected FLOPs under independent per-decision probabilities.

        Exact for one-hot probabilities; see `rankitect.space.cost.expected_flops` for where
        it is an approximation otherwise.
        """
        from rankitect.space.cost import expected_flops

        return expected_flops(self, probs)

    # ---- notable architectures ---------------------------------------------------------------

    @property
    def has_seed(self) -> bool:
        return self._seed is not None

    def seed_arch(self) -> Arch:
        """The hand-designed model the space was grown from."""
        if self._seed is None:
            raise ValueError(f"space {self.name!r} has no seed architecture")
        return self._seed

    def largest(self) -> Arch:
        """A largest architecture: every connection on, every dimension at its maximum, and
        per Choice (in order) the block and pair maximising the total FLOPs given the others."""

        options = [self._widest_settings(c) for c in range(self.num_choices)]
        current = [o[0] for o in options]
        for c in range(self.num_choices):
            current[c] = max(
                options[c],
                key=lambda o: self.flops(Arch(tuple(current[:c] + [o] + current[c + 1 :]))),
            )
        return Arch(tuple(current))

    def _widest_settings(self, c: int) -> list[ChoiceArch]:
        """Each block of Choice ``c`` at its widest: connection blocks with every candidate on
        and the largest dim; pairwise blocks with every (left, right) pair."""
        sp = self.choices[c]
        out = []
        for b in sp.blocks:
            if b in PAIRWISE_BLOCKS:
                out += [
                    ChoiceArch(b, left=i, right=j) for i in sp.candidates for j in sp.candidates
                ]
            else:
                dim = sp.dims[b][-1] if b in DIM_BLOCKS else None
                out.append(ChoiceArch(b, inputs=sp.candidates, dim=dim))
        return out

    def choice_counts(self) -> list[int]:
        """Number of distinct settings of each Choice (blocks x inputs x dims)."""
        counts = []
        for sp in self.choices:
            k = len(sp.candidates)
            n = 0
            for b in sp.blocks:
                if b in PAIRWISE_BLOCKS:
                    n += k * k
                elif b == DOT:  # no single input but the sparse embeddings (inputs_read)
                    n += 2**k - k
                else:
                    n += len(sp.dims[b]) * (2**k - 1)
            counts.append(n)
        return counts

    @property
    def log10_size(self) -> float:
        """log10 of the number of distinct `Arch` values in the space."""
        return sum(math.log10(n) for n in self.choice_counts())

    def __repr__(self) -> str:
        return (
            f"SearchSpace({self.name!r}, choices={self.num_choices}, "
            f"decisions={self.num_decisions}, size=10^{self.log10_size:.1f})"
        )
