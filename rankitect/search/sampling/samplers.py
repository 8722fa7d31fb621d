"""Proposals as Optuna samplers.

An architecture is one categorical Optuna parameter per active decision (`suggest_arch`), so
any Optuna sampler (TPE, random, GP) proposes architectures in the sampling search's harness
(`conf/method/sampler/*.yaml`). `PredictorRLSampler` is the paper's proposer in that role: the
first ``initial_size`` trials are random draws from the space's prior, then each round of
``round_size`` comes from an `RLSampler` trained on a `NeuralPredictor` refitted on every
trial of the earlier rounds.

A sampled trial's place in the search is its *sample index* ``k``: how many trials Optuna's
``ask`` created before it (queued trials and retries excluded). `SamplingPlan` maps ``k`` to a
round; ``k >= trials`` is over the search's budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from rankitect.search.reinforce import seeded_generator
from rankitect.search.sampling.predictor import NeuralPredictor
from rankitect.search.sampling.proposers import RLSampler, one_thread, propose_random
from rankitect.search.sampling.store import arch_key, first_number
from rankitect.space.arch import Arch
from rankitect.space.space import DecisionSpace

SAMPLE_INDEX = "sample_index"


def suggest_arch(trial: optuna.Trial, space: DecisionSpace) -> Arch:
    """The architecture ``trial``'s sampler picks: each active decision's value index as a
    categorical parameter named after the decision (inactive ones are not suggested, so
    Optuna sees the space's conditional structure)."""
    values = [0] * space.num_decisions
    order = sorted(
        range(space.num_decisions), key=lambda i: space.decisions[i].condition is not None
    )
    for i in order:
        d = space.decisions[i]
        if d.condition is not None and space.decisions[d.condition[0]].condition is not None:
            raise ValueError(f"decision {d.name}: a condition on a conditional decision")
        if d.is_active(values):
            values[i] = trial.suggest_categorical(d.name, list(range(d.cardinality)))
    return space.decode(values)


def is_fresh(t: FrozenTrial) -> bool:
    """Whether Optuna's ``ask`` created ``t`` (not a queued trial nor a retry)."""
    return "fixed_params" not in t.system_attrs and "failed_trial" not in t.system_attrs


def sample_index(study: optuna.Study, number: int) -> int:
    """How many fresh trials precede trial ``number``."""
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if t.number < number and is_fresh(t))


@dataclass(frozen=True)
class SamplingPlan:
    """How many trials the sampler proposes and how they fall into rounds."""

    trials: int
    initial_size: int
    round_size: int
    budget: int

    def round_of(self, k: int) -> int:
        return 0 if k < self.initial_size else 1 + (k - self.initial_size) // self.round_size

    def round_start(self, r: int) -> int:
        return 0 if r == 0 else self.initial_size + (r - 1) * self.round_size

    def round_size_of(self, r: int) -> int:
        end = self.initial_size if r == 0 else self.round_start(r) + self.round_size
        return max(0, min(end, self.trials) - self.round_start(r))

    @property
    def rounds(self) -> int:
        return self.round_of(self.trials - 1) + 1


class PredictorRLSampler(optuna.samplers.BaseSampler):
    """The neural predictor + RL sampler as an Optuna sampler (see the module docstring).

    ``space``: the search space; ``plan``: the search's `SamplingPlan`; ``predictor``: the
    `NeuralPredictor` settings (``method.predictor``); the other keyword arguments are the
    `RLSampler`'s (``method.sampler``: steps, batch, lr, alpha, target_flops, ...). A round's
    proposals are computed once per process and handed out by sample index; a process that
    needs round ``r`` waits until every trial of the earlier rounds is finished, so the
    predictor of round ``r`` is fitted on all of them (the paper's synchronous rounds)."""

    def __init__(
        self,
        space: DecisionSpace,
        plan: SamplingPlan | dict[str, int],
        *,
        predictor: dict[str, Any] | None = None,
        seed: int = 0,
        poll_s: float = 0.5,
        **rl: Any,
    ) -> None:
        self.space, self.seed, self.poll_s = space, int(seed), float(poll_s)
        self.plan = plan if isinstance(plan, SamplingPlan) else SamplingPlan(**plan)
        self.predictor_cfg = dict(predictor or {})
        self.rl_cfg = rl
        NeuralPredictor(space, **self.predictor_cfg)  # a bad key fails now, not after round 0
        RLSampler(space, seed=self.seed, **rl)
        self.index = {d.name: i for i, d in enumerate(space.decisions)}
        self._values: dict[int, list[int]] = {}  # trial id -> proposed decision values
        self._rounds: dict[int, list[Arch]] = {}
        self.policy = None  # the last fitted round's

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: BaseDistribution
    ) -> Any:
        values = self._values.get(trial._trial_id)
        if values is None:
            arch = self.propose(study, int(trial.user_attrs[SAMPLE_INDEX]))
            values = self._values[trial._trial_id] = self.space.values(arch).tolist()
        return values[self.index[name]]

    def propose(self, study: optuna.Study, k: int) -> Arch:
        """The architecture of sample index ``k``: the ``k``-th entry of its round, or the
        next one not in the study yet (another process may have taken it)."""
        r = self.plan.round_of(k)
        if r not in self._rounds:
            self._rounds[r] = self.round_proposals(study, r)
        batch = self._rounds[r]
        taken = {t.user_attrs.get("arch_key") for t in study.get_trials(deepcopy=False)}
        j = k - self.plan.round_start(r)
        for arch in [*batch[j:], *batch[:j]]:
            if arch_key(arch) not in taken:
                return arch
        gen = seeded_generator(self.seed, r, k)
        (arch,) = propose_random(self.space, 1, taken, gen) or [self.space.sample(gen)]
        return arch

    def round_proposals(self, study: optuna.Study, r: int) -> list[Arch]:
        """Round ``r``'s architectures, in the order sample indices take them."""
        if r == 0:
            gen = seeded_generator(self.seed, 0)
            return propose_random(self.space, self.plan.initial_size, set(), gen)
        scored = self._wait_for_rounds_before(study, r)
        if len(scored) < 2:
            return propose_random(
                self.space, self.plan.round_size, set(), seeded_generator(self.seed, r)
            )
        predictor = NeuralPredictor(self.space, seed=self.seed + r, **self.predictor_cfg)
        rl = RLSampler(self.space, seed=self.seed, **self.rl_cfg)
        trials = study.get_trials(deepcopy=False)
        exclude = {t.user_attrs["arch_key"] for t in trials if "arch_key" in t.user_attrs}
        with one_thread():
            predictor.fit([a for a, _ in scored], [ne for _, ne in scored])
            proposals = rl.propose(predictor, self.plan.round_size, exclude, r)
        self.policy = rl.policy
        return proposals

    def ready(self, study: optuna.Study, k: int) -> bool:
        """Whether sample index ``k`` can be proposed without waiting: its round's proposals
        are computed, or every trial of the earlier rounds is finished. A worker that would
        wait evaluates queued trials instead (a retried one may be what the round waits for)."""
        r = self.plan.round_of(k)
        if r == 0 or r in self._rounds:
            return True
        return all(t.state.is_finished() for t in _rounds_before(study, r))

    def _wait_for_rounds_before(self, study: optuna.Study, r: int) -> list[tuple[Arch, float]]:
        """Block until every trial of rounds ``< r`` is finished; their (arch, NE) pairs."""
        while True:
            latest = _rounds_before(study, r)
            if all(t.state.is_finished() for t in latest):
                return [
                    (Arch.from_json(t.user_attrs["arch_json"]), float(t.value))
                    for t in latest
                    if t.state == TrialState.COMPLETE
                ]
            fail_stale_trials(study)  # a dead worker's trial is retried by another worker
            time.sleep(self.poll_s)


def _rounds_before(study: optuna.Study, r: int) -> list[FrozenTrial]:
    """The last attempt of every trial of rounds ``< r``."""
    latest: dict[int, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if "arch_json" not in attrs or not attrs.get("stage", "").startswith("round"):
            continue
        if int(attrs["stage"][len("round") :]) >= r:
            continue
        first = first_number(t)
        if first not in latest or t.number > latest[first].number:
            latest[first] = t
    return list(latest.values())
