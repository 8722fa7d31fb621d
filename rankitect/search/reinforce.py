"""REINFORCE pieces of the one-shot search (paper §3.2.2): losses, FLOPs cost, replay buffer.

Rewards are costs here: ``R = NE%(a) + alpha * Cost(a)``, lower is better, so every loss
below is minimised by gradient descent on the policy logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch

COST_KINDS = ("l1", "relu")


def flops_cost(flops: torch.Tensor, target: float, kind: str = "l1") -> torch.Tensor:
    """Eq. 7's ``Cost(a)``, normalised by the target ``c``: ``|F - c| / c`` (L1) or
    ``max(F - c, 0) / c`` (ReLU)."""
    if target <= 0:
        raise ValueError(f"target FLOPs must be > 0, got {target}")
    if kind not in COST_KINDS:
        raise ValueError(f"cost kind must be one of {COST_KINDS}, got {kind!r}")
    rel = (flops.double() - target) / target
    return rel.abs() if kind == "l1" else rel.clamp_min(0.0)


def relative_ne(ne_arch: torch.Tensor, ne_baseline: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ``NE%(a) = (NE_batch(a) - NE_batch(baseline)) / NE_batch(baseline)``."""
    return (ne_arch - ne_baseline) / ne_baseline


def on_policy_loss(log_prob: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Eq. 3 with the mean reward of the batch as baseline ``b`` (averaged, not summed, so the
    learning rate does not depend on the batch size)."""
    advantage = rewards - rewards.mean()
    return (log_prob * advantage.to(log_prob)).mean()


def importance_weights(
    log_prob: torch.Tensor, behaviour_log_prob: torch.Tensor, clip: float = 1e4
) -> torch.Tensor:
    """Eq. 6, ``w = min(P_theta(a) / P_theta'(a), clip)``, normalised to sum to one (WIS).

    Computed in log space: an architecture's probability is a product over ~100 decisions and
    underflows, while the ratio does not. ``P_theta'(a) > 0`` because ``a`` was drawn from it,
    so the paper's ``eps`` is not needed here.
    """
    log_ratio = (log_prob.detach() - behaviour_log_prob.to(log_prob)).clamp(max=math.log(clip))
    w = log_ratio.exp()
    return w / w.sum()


def off_policy_loss(
    log_prob: torch.Tensor,
    behaviour_log_prob: torch.Tensor,
    rewards: torch.Tensor,
    clip: float = 1e4,
) -> torch.Tensor:
    """Eq. 5: weighted-importance-sampled policy gradient on replayed ``(theta', a, R)``."""
    w = importance_weights(log_prob, behaviour_log_prob, clip)
    advantage = (rewards - rewards.mean()).to(log_prob)
    return (w * log_prob * advantage).sum()


class ReplayBuffer:
    """A ring buffer of ``(a, log P_theta'(a), R)``.

    Storing the behaviour policy's log-probability of ``a`` instead of the whole ``theta'`` is
    all Eq. 6 needs, and keeps an entry at one row of decision values and two floats.
    """

    def __init__(self, capacity: int, num_decisions: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.values = torch.zeros(capacity, num_decisions, dtype=torch.long)
        self.log_prob = torch.zeros(capacity, dtype=torch.float64)
        self.reward = torch.zeros(capacity, dtype=torch.float64)
        self.size = 0
        self.cursor = 0

    def __len__(self) -> int:
        return self.size

    def add(self, values: torch.Tensor, log_prob: torch.Tensor, reward: torch.Tensor) -> None:
        for v, lp, r in zip(values, log_prob.detach().cpu(), reward.detach().cpu(), strict=True):
            self.values[self.cursor] = v
            self.log_prob[self.cursor] = lp
            self.reward[self.cursor] = r
            self.cursor = (self.cursor + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, (n,), generator=generator)
        return self.values[idx], self.log_prob[idx], self.reward[idx]

    def state_dict(self) -> dict[str, Any]:
        return {
            "values": self.values.clone(),
            "log_prob": self.log_prob.clone(),
            "reward": self.reward.clone(),
            "size": self.size,
            "cursor": self.cursor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["values"].shape != self.values.shape:
            raise ValueError(
                f"replay buffer state has shape {tuple(state['values'].shape)}, "
                f"expected {tuple(self.values.shape)} (capacity, decisions)"
            )
        self.values.copy_(state["values"])
        self.log_prob.copy_(state["log_prob"])
        self.reward.copy_(state["reward"])
        self.size = int(state["size"])
        self.cursor = int(state["cursor"])
