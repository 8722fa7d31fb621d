"""REINFORCE pieces of the one-shot search (paper §3.2.2): losses, FLOPs cost, reward, replay
buffer, and `PolicyLearner`, which chains them into the on/off-policy update.

Rewards are costs here: ``R = NE%(a) + alpha * Cost(a)``, lower is better, so every loss
below is minimised by gradient descent on the policy logits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rankitect.search.policy import CategoricalPolicy

COST_KINDS = ("l1", "relu", "linear")


def flops_cost(flops: torch.Tensor, target: float, kind: str = "l1") -> torch.Tensor:
    """Eq. 7's ``Cost(a)``, normalised by the target ``c``: ``|F - c| / c`` (L1),
    ``max(F - c, 0) / c`` (ReLU), or ``F / c`` (linear: DistDNAS' cost-aware loss, which
    charges every FLOP, so a module that does not pay for itself in the loss is dropped even
    under the target; ``c`` is then a reference scale, not a goal)."""
    if target <= 0:
        raise ValueError(f"target FLOPs must be > 0, got {target}")
    if kind not in COST_KINDS:
        raise ValueError(f"cost kind must be one of {COST_KINDS}, got {kind!r}")
    if kind == "linear":
        return flops.double() / target
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
    """Eq. 5: weighted-importance-sampled policy gradient on replayed ``(theta', a, R)``.

    The baseline ``b'`` is the weighted mean ``sum_i w_i R_i`` rather than Eq. 5's plain mean:
    only then do the weighted advantages sum to zero. With the plain mean they do not, and a
    decision that every replayed sample shares gets a net push, whose sign follows the
    correlation of ``w`` with ``R``: towards what the policy already prefers (rich get richer).
    """
    w = importance_weights(log_prob, behaviour_log_prob, clip)
    rewards = rewards.to(log_prob)
    advantage = rewards - (w * rewards).sum()
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


REWARD_KINDS = ("relative", "absolute")


def search_reward(
    ne_arch: torch.Tensor,
    ne_baseline: torch.Tensor | None,
    flops: torch.Tensor,
    *,
    kind: str = "relative",
    alpha: float = 0.0,
    target: float | None = None,
    cost: str = "l1",
) -> torch.Tensor:
    """Eq. 7, ``R = NE%(a) + alpha * Cost(a)`` (float64; lower is better).

    ``kind="absolute"`` replaces ``NE%(a)`` by the plain batch NE (the ablation of appendix A,
    no baseline model needed); ``alpha == 0`` drops the FLOPs term and needs no target.
    """
    if kind not in REWARD_KINDS:
        raise ValueError(f"reward must be one of {REWARD_KINDS}, got {kind!r}")
    if kind == "relative":
        if ne_baseline is None:
            raise ValueError("reward='relative' needs the baseline model's batch NE")
        value = relative_ne(ne_arch.double(), ne_baseline.double())
    else:
        value = ne_arch.double()
    if alpha == 0.0:
        return value
    if target is None:
        raise ValueError("a FLOPs cost (alpha != 0) needs a target")
    return value + alpha * flops_cost(flops, target, cost)


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by hashing ``keys`` (e.g. ``seed, rank, step``).

    Deriving a fresh generator per step from counters instead of carrying one along makes a
    resumed run draw exactly what an uninterrupted one would, on every DDP rank, with nothing
    but the counters in the checkpoint.
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


POLICY_OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


class PolicyLearner:
    """On/off-policy REINFORCE of §3.2.2 on a `CategoricalPolicy`.

    `update` takes one batch of on-policy samples ``(a_i, R_i)``, all drawn from the current
    policy: one REINFORCE step (Eq. 3), the batch is stored in the replay buffer with its
    behaviour log-probability, then ``off_policy_updates`` steps on replayed batches of the
    same size with clipped weighted importance sampling (Eq. 5-6). Replay draws use a
    generator derived from ``(seed, update index, k)``, so every DDP rank replays the same rows.
    """

    def __init__(
        self,
        policy: CategoricalPolicy,
        *,
        optimizer: str = "adam",
        lr: float = 0.01,
        off_policy_updates: int = 0,
        replay_capacity: int = 1024,
        is_clip: float = 1e4,
        seed: int = 0,
    ) -> None:
        if optimizer not in POLICY_OPTIMIZERS:
            raise ValueError(
                f"policy_optimizer must be one of {sorted(POLICY_OPTIMIZERS)}, got {optimizer!r}"
            )
        if not 0 < lr < math.inf:
            raise ValueError(f"policy_lr must be finite and > 0, got {lr}")
        if off_policy_updates < 0:
            raise ValueError(f"off_policy_updates must be >= 0, got {off_policy_updates}")
        if replay_capacity < 1:
            raise ValueError(f"replay_capacity must be >= 1, got {replay_capacity}")
        if not is_clip > 0:  # NaN too
            raise ValueError(f"is_clip must be > 0, got {is_clip}")
        self.policy = policy
        self.optimizer = POLICY_OPTIMIZERS[optimizer](policy.parameters(), lr=lr)
        self.off_policy_updates = int(off_policy_updates)
        self.buffer = ReplayBuffer(replay_capacity, policy.space.num_decisions)
        self.is_clip = float(is_clip)
        self.seed = int(seed)
        self.updates = 0

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def update(self, values: torch.Tensor, rewards: torch.Tensor) -> None:
        """``values`` int64 ``(n, num_decisions)`` drawn from the current policy, ``rewards``
        ``(n,)``."""
        log_prob = self.policy.log_prob(values)
        self._step(on_policy_loss(log_prob, rewards))
        self.buffer.add(values, log_prob.detach(), rewards)
        gen = seeded_generator(self.seed, self.updates)
        for _ in range(self.off_policy_updates):
            v, behaviour, r = self.buffer.sample(len(values), gen)
            self._step(off_policy_loss(self.policy.log_prob(v), behaviour, r, self.is_clip))
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.updates = int(state["updates"])
