"""`CategoricalPolicy`: one independent categorical distribution per search-space decision."""

from __future__ import annotations

import torch
from torch import nn

from rankitect.space.arch import Arch
from rankitect.space.space import SearchSpace


class CategoricalPolicy(nn.Module):
    """Logits ``theta`` over the decisions of ``space``, padded to ``(num_decisions, width)``.

    Log-probabilities and entropies count only the decisions that are active in an
    architecture (a dimension decision of an unchosen block does not shape the model).

    Args:
        space: the search space whose ``decisions`` the policy parameterises.
        init: ``"prior"`` starts at the space's sampling distribution (connections on with
            ``connection_prob``); ``"uniform"`` at equal probabilities.
    """

    def __init__(self, space: SearchSpace, init: str = "prior") -> None:
        super().__init__()
        if init not in ("prior", "uniform"):
            raise ValueError(f"policy init must be 'prior' or 'uniform', got {init!r}")
        self.space = space
        cards = torch.tensor([d.cardinality for d in space.decisions])
        width = int(cards.max())
        valid = torch.arange(width) < cards.unsqueeze(1)
        logits = torch.zeros(len(cards), width)
        if init == "prior":
            for i, d in enumerate(space.decisions):
                logits[i, : d.cardinality] = torch.tensor(d.prior).clamp_min(1e-6).log()
        self.register_buffer("valid", valid, persistent=False)
        self.logits = nn.Parameter(logits)

    def log_probs(self) -> torch.Tensor:
        """``(num_decisions, width)`` log-probabilities; padding is ``-inf``."""
        masked = self.logits.masked_fill(~self.valid, float("-inf"))
        return torch.log_softmax(masked, dim=-1)

    def probs(self) -> list[torch.Tensor]:
        """Per-decision probability vectors (the soft weights the supernet and costs take)."""
        p = self.log_probs().exp()
        return [p[i, : d.cardinality] for i, d in enumerate(self.space.decisions)]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` independent draws of every decision: int64 ``(n, num_decisions)``."""
        p = self.log_probs().exp().cpu()
        return torch.multinomial(p, n, replacement=True, generator=generator).T.contiguous()

    def log_prob(self, values: torch.Tensor) -> torch.Tensor:
        """Log-probability of each architecture in ``values`` ``(n, num_decisions)``: ``(n,)``."""
        lp = self.log_probs()
        values = values.to(lp.device)
        per_decision = lp.gather(1, values.T).T
        active = self.space.active(values.cpu()).to(lp.device)
        return (per_decision * active).sum(-1)

    def entropy(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Entropy summed over the active decisions of each row of ``values`` ``(n,)``;
        over every decision (a scalar) when ``values`` is None."""
        lp = self.log_probs()
        per_decision = -(lp.exp() * lp.masked_fill(~self.valid, 0.0)).sum(-1)
        if values is None:
            return per_decision.sum()
        active = self.space.active(values.cpu()).to(lp.device)
        return (per_decision.unsqueeze(0) * active).sum(-1)

    @torch.no_grad()
    def most_likely_values(self) -> torch.Tensor:
        """The argmax of every decision, ``(num_decisions,)``."""
        return self.logits.masked_fill(~self.valid, float("-inf")).argmax(-1).cpu()

    def most_likely(self) -> Arch:
        return self.space.decode(self.most_likely_values())
