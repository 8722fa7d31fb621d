"""Materialised subnets: a compact, mask-free model of one `Arch`.

Each compact module keeps its parameters under fixed names and computes through a *runner*
that takes those parameters as a dict. The supernet's hard-mask path calls the same runners
with weights sliced out of its largest tensors (`Supernet.subnet_params`), so a subnet loaded
with that state computes exactly what the supernet computes under the architecture's masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rankitect.models.embedding import FeatureEmbedding
from rankitect.space.arch import DENSE, SPARSE, Arch, choice_input
from rankitect.space.blocks import (
    EMBED_FC,
    LINEAR,
    PAIRWISE_BLOCKS,
    bottleneck_fc,
    compressed_dot,
    embed_fc,
    flatten_2d,
    interact,
    norm_act,
    stack_rows,
)
from rankitect.space.layout import Shape, arch_shapes
from rankitect.space.space import SearchSpace

if TYPE_CHECKING:
    from rankitect.space.supernet import Supernet

Params = Mapping[str, torch.Tensor]


def run_linear(p: Params, inputs: list[torch.Tensor]) -> torch.Tensor:
    """2-D adaptor (flatten and concatenate) -> linear -> norm -> ReLU: ``(B, dim)``."""
    x = (
        torch.cat([flatten_2d(t) for t in inputs], dim=1)
        if len(inputs) > 1
        else flatten_2d(inputs[0])
    )
    return norm_act(F.linear(x, p["fc.weight"], p["fc.bias"]), p["norm.weight"], p["norm.bias"])


def run_rows(block: str, p: Params, inputs: list[torch.Tensor]) -> torch.Tensor:
    """3-D adaptor, then EmbedFC ``(B, dim, D)`` or compressed dot product ``(B, rows * dim)``.

    The adaptor projects each 2-D input ``t`` to one row of width D with ``proj.<t>``.
    """
    rows = []
    for t, x in enumerate(inputs):
        if x.dim() == 2:
            x = F.linear(x, p[f"proj.{t}.weight"], p[f"proj.{t}.bias"]).unsqueeze(1)
        rows.append(x)
    x = stack_rows(rows)
    op = embed_fc if block == EMBED_FC else compressed_dot
    return norm_act(op(x, p["weight"], p["bias"]), p["norm.weight"], p["norm.bias"])


def run_pairwise(
    kind: str, p: Params, projected: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """``interaction(FC_ij(x_i), x_j)`` -> norm -> ReLU, at the right input's flat width."""
    return norm_act(interact(kind, projected, flatten_2d(right)), p["norm.weight"], p["norm.bias"])


def run_pair_fc(p: Params, left: torch.Tensor) -> torch.Tensor:
    """The shared pairwise projection ``FC_ij`` of the flattened left input."""
    return bottleneck_fc(
        flatten_2d(left), p["fc1.weight"], p["fc1.bias"], p["fc2.weight"], p["fc2.bias"]
    )


def run_classifier(p: Params, x: torch.Tensor) -> torch.Tensor:
    """Final classification layer: flat view of the last Choice -> ``(B,)`` logits."""
    return F.linear(flatten_2d(x), p["weight"], p["bias"]).squeeze(-1)


class _Compact(nn.Module):
    """A compact module: its parameters, by name, are what its runner reads."""

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.named_parameters())


class LinearChoice(_Compact):
    def __init__(self, fan_in: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(fan_in, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return run_linear(self.params(), inputs)


class RowChoice(_Compact):
    """EmbedFC or compressed dot product over the 3-D adaptor of its inputs."""

    def __init__(self, block: str, inputs: list[Shape], dim: int, embedding_dim: int) -> None:
        super().__init__()
        self.block = block
        # Identity keeps ``proj.<t>`` aligned with input position t for 3-D inputs
        self.proj = nn.ModuleList(
            nn.Identity() if s.is3d else nn.Linear(s.size, embedding_dim) for s in inputs
        )
        rows = sum(s.rows for s in inputs)
        bound = 1.0 / math.sqrt(rows)
        self.weight = nn.Parameter(torch.empty(dim, rows).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.norm = nn.LayerNorm(embedding_dim if block == EMBED_FC else rows * dim)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return run_rows(self.block, self.params(), inputs)


class PairwiseChoice(_Compact):
    def __init__(self, kind: str, width: int) -> None:
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(width)

    def forward(self, projected: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return run_pairwise(self.kind, self.params(), projected, right)


class PairFC(_Compact):
    """``FC_ij`` through a bottleneck: flat width of input i -> bottleneck -> that of input j."""

    def __init__(self, fan_in: int, bottleneck: int, fan_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(fan_in, bottleneck)
        self.fc2 = nn.Linear(bottleneck, fan_out)

    def forward(self, left: torch.Tensor) -> torch.Tensor:
        return run_pair_fc(self.params(), left)


def pair_key(left: int, right: int) -> str:
    return f"{left}_{right}"


class SubnetModel(nn.Module):
    """Standalone model of one architecture: ``forward(dense, sparse) -> (B,)`` logits.

    Only Choices reachable from the classifier are built and run; each shared pairwise
    projection ``FC_ij`` is built and computed once per forward.
    """

    def __init__(self, space: SearchSpace, arch: Arch, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.space = space
        self.arch = space.validate(arch)
        # dropout on every Choice output: regularises a retrained subnet on small data
        # (BARS' Frappe baselines use 0.2-0.4); the search itself trains without it
        self.dropout = float(dropout)
        d = space.embedding_dim
        shapes = arch_shapes(space, arch)
        # an architecture that never reads the embeddings has no table (and no unused weights)
        reads_sparse = SPARSE in arch.inputs_read()
        self.embedding = FeatureEmbedding(space.spec, d) if reads_sparse else None
        self.order = arch.reachable()
        choices, pairs = {}, {}
        for c in self.order:
            ch = arch.choices[c]
            if ch.block == LINEAR:
                fan_in = sum(shapes[k].flat(d) for k in ch.inputs)
                choices[str(c)] = LinearChoice(fan_in, ch.dim)
            elif ch.block in PAIRWISE_BLOCKS:
                choices[str(c)] = PairwiseChoice(ch.block, shapes[ch.right].flat(d))
                pairs[pair_key(ch.left, ch.right)] = PairFC(
                    shapes[ch.left].flat(d), space.bottleneck, shapes[ch.right].flat(d)
                )
            else:
                choices[str(c)] = RowChoice(ch.block, [shapes[k] for k in ch.inputs], ch.dim, d)
        self.choices = nn.ModuleDict(choices)
        self.pairs = nn.ModuleDict(pairs)
        self.classifier = nn.Linear(shapes[choice_input(len(arch.choices) - 1)].flat(d), 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        outs: dict[int, torch.Tensor] = {DENSE: dense}
        if self.embedding is not None:
            outs[SPARSE] = self.embedding(sparse)
        projected: dict[str, torch.Tensor] = {}
        for c in self.order:
            ch, module = self.arch.choices[c], self.choices[str(c)]
            if ch.block in PAIRWISE_BLOCKS:
                key = pair_key(ch.left, ch.right)
                if key not in projected:
                    projected[key] = self.pairs[key](outs[ch.left])
                outs[choice_input(c)] = module(projected[key], outs[ch.right])
            else:
                outs[choice_input(c)] = module([outs[k] for k in ch.inputs])
            if self.dropout:
                out = outs[choice_input(c)]
                outs[choice_input(c)] = F.dropout(out, self.dropout, self.training)
        last = outs[choice_input(len(self.arch.choices) - 1)]
        return run_classifier(dict(self.classifier.named_parameters()), last)

    def flops(self) -> int:
        """Analytic FLOPs per example (equal to FlopCounterMode's count)."""
        return self.space.flops(self.arch)

    def num_params(self) -> int:
        """All parameters, embedding table included (when the architecture reads it)."""
        return sum(p.numel() for p in self.parameters())

    def dense_params(self) -> int:
        """Parameters outside the embedding table (the paper's "dense parameters")."""
        table = 0 if self.embedding is None else self.embedding.table.weight.numel()
        return self.num_params() - table


def materialize(
    space: SearchSpace, arch: Arch, supernet: Supernet | None = None, dropout: float = 0.0
) -> SubnetModel:
    """Build the standalone model of ``arch``; with ``supernet``, copy its weights into it
    (leading slices for smaller dimensions) so the subnet starts where the supernet is.

    A space other than a Choice `SearchSpace` (e.g. `rankitect.space.dhen.DHENSpace`)
    materialises its own architectures (``space.materialize``)."""
    if not isinstance(space, SearchSpace):
        return space.materialize(arch, supernet, dropout=dropout)
    model = SubnetModel(space, arch, dropout=dropout)
    if supernet is not None:
        with torch.no_grad():
            model.load_state_dict(supernet.subnet_params(arch))
    return model
