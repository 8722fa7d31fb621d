"""Proposers: where the next round's architectures come from.

`propose_random` draws from the space's prior (the first round). `RLSampler` trains a
`CategoricalPolicy` with REINFORCE against a fitted `NeuralPredictor` (the paper's change to
the original Neural Predictor, which ranked random samples) and returns the best distinct
architectures it met that are not scored yet.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from contextlib import contextmanager

import torch

from rankitect.search.policy import CategoricalPolicy
from rankitect.search.reinforce import PolicyLearner, flops_cost, seeded_generator
from rankitect.search.sampling.predictor import NeuralPredictor, encode_values
from rankitect.search.sampling.store import arch_key
from rankitect.space.arch import Arch
from rankitect.space.space import SearchSpace


@contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny models (the predictor, the policy) on one intra-op thread: on a shared CPU,
    more threads spin against each other and the workers and are slower by orders of magnitude."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def propose_random(
    space: SearchSpace, n: int, exclude: Container[str], generator: torch.Generator
) -> list[Arch]:
    """Up to ``n`` distinct prior samples whose `arch_key` is not in ``exclude`` (fewer only
    when the space runs out of new architectures within ``50 n`` draws)."""
    out: dict[str, Arch] = {}
    for _ in range(50 * max(n, 1)):
        if len(out) == n:
            break
        arch = space.sample(generator)
        key = arch_key(arch)
        if key not in exclude and key not in out:
            out[key] = arch
    return list(out.values())


class RLSampler:
    """REINFORCE on the predictor's score: reward (a cost, lower is better) is
    ``predicted NE (standardised) + alpha * Cost(FLOPs)`` with the exact analytic FLOPs and
    `flops_cost` against ``target_flops`` (``alpha = 0``: NE only), plus ``beta`` times the
    predictor's own cost head (standardised log-FLOPs or log-cost; ``beta = 0``: unused).
    ``space`` is anything with the `SearchSpace` decision interface (``decisions``, ``active``,
    ``decode``, ``values``, ``encode``, ``encoding_size``), e.g. the AutoML `JointSpace`.

    Args:
        steps: policy updates; ``batch`` architectures sampled per update.
        lr, optimizer, off_policy_updates, init: as in `PolicyLearner` / `CategoricalPolicy`.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        steps: int = 100,
        batch: int = 64,
        lr: float = 0.05,
        optimizer: str = "adam",
        off_policy_updates: int = 0,
        init: str = "prior",
        alpha: float = 0.0,
        target_flops: float | None = None,
        cost: str = "relu",
        beta: float = 0.0,
        seed: int = 0,
    ) -> None:
        if steps < 1 or batch < 2:
            raise ValueError("method.sampler.steps must be >= 1 and method.sampler.batch >= 2")
        if alpha and target_flops is None:
            raise ValueError("method.sampler.alpha > 0 needs method.sampler.target_flops")
        self.space = space
        self.steps = int(steps)
        self.batch = int(batch)
        self.lr = float(lr)
        self.optimizer = optimizer
        self.off_policy_updates = int(off_policy_updates)
        self.init = init
        self.alpha = float(alpha)
        self.target_flops = target_flops
        self.cost = cost
        self.beta = float(beta)
        self.seed = int(seed)
        self.policy: CategoricalPolicy | None = None

    def _rewards(
        self, predictor: NeuralPredictor, values: torch.Tensor, archs: list[Arch]
    ) -> torch.Tensor:
        score, cost_score = predictor.predict_standardised(encode_values(self.space, values))
        reward = score.double()
        if self.beta:
            reward = reward + self.beta * cost_score.double()
        if self.alpha:
            flops = torch.tensor([self.space.flops(a) for a in archs], dtype=torch.float64)
            reward = reward + self.alpha * flops_cost(flops, float(self.target_flops), self.cost)
        return reward

    def propose(
        self, predictor: NeuralPredictor, n: int, exclude: Container[str], round_index: int
    ) -> list[Arch]:
        """The ``n`` distinct unscored architectures with the lowest reward met while training
        the policy (and in a final draw from it)."""
        self.policy = CategoricalPolicy(self.space, init=self.init)
        learner = PolicyLearner(
            self.policy,
            optimizer=self.optimizer,
            lr=self.lr,
            off_policy_updates=self.off_policy_updates,
            seed=self.seed,
        )
        seen: dict[str, tuple[float, Arch]] = {}

        def draw(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            values = self.policy.sample(self.batch, seeded_generator(self.seed, round_index, step))
            archs = [self.space.decode(v) for v in values]
            rewards = self._rewards(predictor, values, archs)
            for a, r in zip(archs, rewards.tolist(), strict=True):
                key = arch_key(a)
                if key not in exclude:
                    seen[key] = (r, a)
            return values, rewards

        for step in range(self.steps):
            learner.update(*draw(step))
        # The trained policy's own draws are the candidates it converged to.
        for extra in range(max(1, -(-n // self.batch))):
            draw(self.steps + extra)
        ranked = sorted(seen.values(), key=lambda ra: ra[0])
        return [a for _, a in ranked[:n]]
