"""Gumbel-softmax relaxation of the search space's decisions (paper §3.2.3, DNAS).

Every decision is a categorical over its labels; its Gumbel-softmax sample is
``softmax((theta + g) / tau)`` with ``g ~ Gumbel(0, 1)``, a point of the probability simplex
that tends to a one-hot draw of ``softmax(theta)`` as the temperature ``tau`` goes to zero and
is differentiable in ``theta`` (the reparameterisation trick). ``hard=True`` returns the
one-hot argmax in the forward pass with the soft sample's gradient (straight-through).

The caller passes the noise generator; `DNASModule` derives one per step from ``(seed, rank,
step)`` (`rankitect.search.reinforce.seeded_generator`), so a resumed run draws exactly the
noise of an uninterrupted one and every DDP rank draws its own realisations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gumbel_softmax(
    logits: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    num_samples: int | None = None,
    hard: bool = False,
) -> torch.Tensor:
    """Gumbel-softmax samples of padded per-decision logits.

    Args:
        logits: ``(num_decisions, width)``; positions where ``valid`` is False are padding.
        valid: bool ``(num_decisions, width)``.
        temperature: ``tau > 0``.
        generator: CPU generator for the noise (the noise is moved to ``logits``' device).
        num_samples: ``None`` for one realisation ``(num_decisions, width)``, else ``n``
            independent ones ``(n, num_decisions, width)``.
        hard: straight-through: one-hot forward values, soft-sample gradients.

    Returns:
        Samples that sum to one over the valid positions of every decision, zero on padding.
    """
    if temperature <= 0:
        raise ValueError(f"Gumbel-softmax temperature must be > 0, got {temperature}")
    shape = logits.shape if num_samples is None else (num_samples, *logits.shape)
    # -log(E) with E ~ Exp(1) is Gumbel(0, 1); exponential_ never returns 0, so no clamping.
    noise = -torch.empty(shape, dtype=logits.dtype).exponential_(generator=generator).log()
    scores = (logits + noise.to(logits.device)) / temperature
    soft = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    # one_hot + (soft - soft.detach()) is exactly one-hot in value, soft in gradient.
    return one_hot + (soft - soft.detach())


def split_decisions(samples: torch.Tensor, cardinalities: list[int]) -> list[torch.Tensor]:
    """Padded ``(..., num_decisions, width)`` -> one ``(..., cardinality)`` tensor per decision."""
    return [samples[..., i, :card] for i, card in enumerate(cardinalities)]
