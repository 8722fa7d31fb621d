"""Materialised subnets: a compact, mask-free model of one `Arch`.

A `SubnetModel` is built of the supernet's own block modules (`SuperChoice`, `PairFC`,
`Classifier`) at exactly the architecture's sizes and runs the same forward
(`ChoiceNet.run_hard`), so a subnet loaded with `Supernet.subnet_params` computes exactly what
the supernet computes under the architecture's masks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from rankitect.models.embedding import FeatureEmbedding
from rankitect.space.arch import SPARSE, Arch, choice_input
from rankitect.space.blocks import PAIRWISE_BLOCKS, Classifier, PairFC
from rankitect.space.layout import HardPlan, SpaceLayout, point_spec
from rankitect.space.space import SearchSpace
from rankitect.space.supernet import ChoiceNet, SuperChoice, pair_key


class SubnetModel(ChoiceNet):
    """Standalone model of one architecture: ``forward(dense, sparse) -> (B,)`` logits.

    Only Choices reachable from the classifier are built and run; each shared pairwise
    projection ``FC_ij`` is built and computed once per forward. Norm, activation,
    initialisation, dropout and embedding L2 are the space's `LayerSettings`; ``dropout``
    overrides the space's ``layer.dropout`` (a Choice's own ``dropout`` stays).
    """

    def __init__(self, space: SearchSpace, arch: Arch, dropout: float | None = None) -> None:
        super().__init__()
        settings = space.layer if dropout is None else replace(space.layer, dropout=dropout)
        self.space, self.settings = space, settings
        self.arch = space.validate(arch)
        d, init = space.embedding_dim, settings.init
        layout = SpaceLayout.of_arch(space, self.arch)
        # an architecture that never reads the embeddings has no table (and no unused weights)
        reads_sparse = SPARSE in self.arch.inputs_read()
        self.embedding = (
            FeatureEmbedding(space.spec, d, settings.emb_init_std) if reads_sparse else None
        )
        choices, pairs = {}, {}
        for c in self.arch.reachable():
            ch = self.arch.choices[c]
            choices[str(c)] = SuperChoice(
                point_spec(ch), layout.choices[c], layout.sources, d, settings
            )
            if ch.block in PAIRWISE_BLOCKS:
                left, right = layout.sources[ch.left].flat, layout.sources[ch.right].flat
                pairs[pair_key(ch.left, ch.right)] = PairFC(left, space.bottleneck, right, init)
        self.choices = nn.ModuleDict(choices)
        self.pairs = nn.ModuleDict(pairs)
        last = layout.sources[choice_input(len(self.arch.choices) - 1)].flat
        self.classifier = Classifier(last, init)
        # every span covers a whole tensor: the plan holds no tensors and suits any device
        self._plan = HardPlan(space, layout, self.arch)

    def choice(self, c: int) -> SuperChoice:
        return self.choices[str(c)]

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.run_hard(dense, sparse, self.arch, self._plan)

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
    space: Any, arch: Any, supernet: nn.Module | None = None, dropout: float | None = None
) -> nn.Module:
    """Build the standalone model of ``arch``; with ``supernet``, copy its weights (and norm
    statistics) into it, so the subnet starts where the supernet is. ``dropout``: None keeps
    the space's.

    A space other than a Choice `SearchSpace` (e.g. `rankitect.space.dhen.DHENSpace`)
    materialises its own architectures (``space.materialize``)."""
    if not isinstance(space, SearchSpace):
        return space.materialize(arch, supernet, dropout=dropout or 0.0)
    model = SubnetModel(space, arch, dropout=dropout)
    if supernet is not None:
        with torch.no_grad():
            model.load_state_dict(supernet.subnet_params(arch))
    return model
