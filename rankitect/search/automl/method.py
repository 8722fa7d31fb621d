"""Predictor-based AutoML over architecture and hyper-parameters (AutoML for large capacity
modeling, §3.1) with learning-curve low fidelity. See docs/automl.md.

1. ``pilots`` random joint configurations train fully (``full_examples``), recording curves;
   `pick_truncation` chooses how early the others may stop.
2. Round 0: ``initial_size`` random configurations, trained to the truncation point and scored
   by their extrapolated final NE (pilots by their real one).
3. Rounds 1..: the multi-task `NeuralPredictor` (NE head on the pairwise ranking loss + a cost
   head) is refitted on every scored trial and the `RLSampler` proposes ``round_size`` new
   configurations on the reward ``NE score + beta * cost score``; until ``trials`` are scored.
   ``strategy: random`` draws these rounds at random instead (the random-search baseline).
4. The ``finalists`` best by score train fully; the best of them by validation NE is the result.

Every trial lives in a `TrialStore` (in the run directory unless ``store`` names one), which
the proposer evaluates itself: a restarted run re-evaluates nothing already done.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rankitect.io import atomic_write_text
from rankitect.search.automl.curves import (
    RANK_BY,
    Truncation,
    fit_power_law,
    pick_truncation,
    truncate,
)
from rankitect.search.automl.evaluator import CurveEvaluator
from rankitect.search.automl.space import JointConfig, JointSpace, model_key
from rankitect.search.method import to_plain
from rankitect.search.outcome import SearchOutcome
from rankitect.search.reinforce import seeded_generator
from rankitect.search.sampling.predictor import NeuralPredictor
from rankitect.search.sampling.proposers import RLSampler, one_thread, propose_random
from rankitect.search.sampling.store import DONE, FINISHED, Trial, TrialStore
from rankitect.search.sampling.worker import run_trial, worker_name
from rankitect.space.space import SearchSpace

log = logging.getLogger(__name__)

STRATEGIES = ("predictor", "random")
COSTS = ("flops", "throughput")
LOW_FIDELITY_KEYS = {
    "full_examples",
    "eval_every",
    "val_examples",
    "candidates",
    "threshold",
    "rank_by",
}
CONFIG_KEY = "automl_config"


def new_models(configs: list[JointConfig], tried: set[str], n: int) -> list[JointConfig]:
    """The first ``n`` of ``configs`` (in order) whose `model_key` is not in ``tried`` nor
    repeated among them."""
    out, seen = [], set(tried)
    for config in configs:
        key = model_key(config)
        if key not in seen:
            seen.add(key)
            out.append(config)
            if len(out) == n:
                break
    return out


class AutoMLSearch:
    """``conf/method/automl.yaml``; see the module docstring and docs/automl.md."""

    name = "automl"

    def __init__(
        self,
        *,
        hparams: Any = None,
        fixed: Any = None,
        low_fidelity: Any,
        predictor: Any,
        sampler: Any,
        strategy: str = "predictor",
        trials: int = 100,
        pilots: int = 10,
        initial_size: int = 30,
        round_size: int = 20,
        finalists: int = 3,
        store: str | None = None,
        heartbeat_s: float = 5.0,
        stale_after_s: float = 600.0,
        seed: int = 0,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"method.strategy must be one of {STRATEGIES}, got {strategy!r}")
        if pilots < 2 or initial_size < 1 or round_size < 1 or finalists < 1:
            raise ValueError(
                "method.pilots >= 2, method.initial_size, round_size and finalists >= 1 needed"
            )
        if trials < pilots + initial_size:
            raise ValueError(
                f"method.trials ({trials}) must be >= method.pilots + method.initial_size "
                f"({pilots + initial_size})"
            )
        self.hparams = dict(to_plain(hparams) or {})
        self.fixed = dict(to_plain(fixed) or {})
        self.low_fidelity = dict(to_plain(low_fidelity))
        unknown = set(self.low_fidelity) - LOW_FIDELITY_KEYS
        missing = {"full_examples", "eval_every", "candidates"} - set(self.low_fidelity)
        if unknown or missing:
            raise ValueError(
                f"method.low_fidelity takes {sorted(LOW_FIDELITY_KEYS)}; unknown: "
                f"{sorted(unknown)}, missing: {sorted(missing)}"
            )
        lf = self.low_fidelity
        self.full_examples = int(lf["full_examples"])
        self.candidates = [int(c) for c in lf["candidates"]]
        if not self.candidates or max(self.candidates) >= self.full_examples:
            raise ValueError(
                "method.low_fidelity.candidates must be non-empty and below full_examples"
            )
        self.threshold = float(lf.get("threshold", 0.6))
        self.rank_by = lf.get("rank_by", "extrapolated")
        if self.rank_by not in RANK_BY:
            raise ValueError(f"method.low_fidelity.rank_by must be one of {RANK_BY}")
        self.predictor_cfg = dict(to_plain(predictor))
        self.cost = self.predictor_cfg.pop("cost", "flops")
        if self.cost not in COSTS:
            raise ValueError(f"method.predictor.cost must be one of {COSTS}, got {self.cost!r}")
        self.sampler_cfg = dict(to_plain(sampler))
        self.strategy = strategy
        self.trials = int(trials)
        self.pilots = int(pilots)
        self.initial_size = int(initial_size)
        self.round_size = int(round_size)
        self.finalists = int(finalists)
        self.store_url = store
        self.heartbeat_s = float(heartbeat_s)
        self.stale_after_s = float(stale_after_s)
        self.seed = int(seed)

    # ---- evaluation --------------------------------------------------------------------------

    def _evaluate(
        self, store: TrialStore, evaluator: CurveEvaluator, configs: list, budget: int, stage: str
    ) -> list[Trial]:
        """Queue ``configs`` at ``budget`` (pairs already stored are reused) and evaluate the
        queue here; returns their trials in order."""
        ids = store.enqueue(configs, budget, stage)
        name = worker_name()
        while (trial := store.claim(name)) is not None:
            run_trial(store, evaluator, trial, self.heartbeat_s)
        by_id = {t.id: t for t in store.trials(ids=ids)}
        unfinished = [i for i in ids if by_id[i].status not in FINISHED]
        if unfinished:
            raise RuntimeError(
                f"trials {unfinished} are held by another process; wait {self.stale_after_s}s "
                "(method.stale_after_s) for them to be re-queued, or use a new method.store"
            )
        return [by_id[i] for i in ids]

    def _score(self, trial: Trial, truncation: int) -> float:
        """Lower is better: the NE extrapolated from the curve up to the truncation point (or
        the NE reached there, ``rank_by: last``). A pilot is scored from its curve cut at that
        point too: its full-run NE is on another scale (the extrapolation's bias is not in it),
        and mixing the two would rank pilots against the others unfairly."""
        if trial.status != DONE:
            return math.inf
        m = trial.metrics
        if trial.budget >= self.full_examples:
            cut = truncate(m["curve"], truncation)
            if self.rank_by == "last":
                value = cut[-1][1]
            else:
                value = fit_power_law(cut, self.full_examples).value
        else:
            value = m["ne_extrap"] if self.rank_by == "extrapolated" else m["ne"]
        return float(value) if math.isfinite(value) else math.inf

    def _cost(self, trial: Trial) -> float:
        return 1.0 / max(float(trial.metrics["examples_per_s"]), 1e-9)

    def _propose(
        self, space: JointSpace, scored: list[tuple[Trial, float]], store: TrialStore, r: int
    ) -> tuple[list[JointConfig], Any]:
        """Round ``r``'s proposals: configurations that train a model not tried yet."""
        n = self.initial_size if r == 0 else self.round_size
        exclude = {t.arch_key for t in store.trials()}
        tried = {model_key(t.arch) for t in store.trials()}
        # Draw extra: several distinct configurations may train one model (see model_key).
        if self.strategy == "random" or r == 0:
            gen = seeded_generator(self.seed, r)
            return new_models(propose_random(space, 4 * n, exclude, gen), tried, n), None
        predictor = NeuralPredictor(space, seed=self.seed + r, **self.predictor_cfg)
        sampler = RLSampler(space, seed=self.seed, **self.sampler_cfg)
        configs = [t.arch for t, _ in scored]
        cost = [self._cost(t) for t, _ in scored] if self.cost == "throughput" else None
        with one_thread():
            predictor.fit(configs, [s for _, s in scored], cost)
            proposals = sampler.propose(predictor, 4 * n, exclude, r)
        return new_models(proposals, tried, n), sampler.policy

    # ---- the search ----------------------------------------------------------------------------

    def _open_store(self, cfg: DictConfig, output_dir: Path) -> TrialStore:
        url = self.store_url or f"sqlite:///{(output_dir / 'trials.db').resolve()}"
        store = TrialStore(
            url,
            heartbeat_s=self.heartbeat_s,
            stale_after_s=self.stale_after_s,
            arch_type=JointConfig,
        )
        config = {
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "search_space": OmegaConf.to_container(cfg.search_space, resolve=True),
            "hparams": self.hparams,
            "fixed": self.fixed,
            "low_fidelity": self.low_fidelity,
            "seed": self.seed,
        }
        store.bind_config(CONFIG_KEY, config, "data, search_space, hparams, fixed or low_fidelity")
        return store

    def run(
        self, space: SearchSpace, datamodule: Any, cfg: DictConfig, output_dir: str | Path
    ) -> SearchOutcome:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        joint = JointSpace(
            OmegaConf.to_container(cfg.search_space, resolve=True),
            datamodule.feature_spec,
            self.hparams,
            self.fixed,
        )
        # Fail on a bad method.predictor / method.sampler key now, not after the pilots.
        NeuralPredictor(joint, **self.predictor_cfg)
        RLSampler(joint, **self.sampler_cfg)
        evaluator = CurveEvaluator(
            joint,
            datamodule,
            full_examples=self.full_examples,
            eval_every=int(self.low_fidelity["eval_every"]),
            val_examples=int(self.low_fidelity.get("val_examples", 20000)),
            seed=self.seed,
        )
        store = self._open_store(cfg, output_dir)
        if store.has_stage("pilot"):  # a restart: the pilots are those already stored
            pilot_configs = [t.arch for t in store.trials(stage_prefix="pilot")]
        else:
            gen = seeded_generator(self.seed, 10_000)
            pilot_configs = new_models(
                propose_random(joint, 4 * self.pilots, set(), gen), set(), self.pilots
            )
        pilots = self._evaluate(store, evaluator, pilot_configs, self.full_examples, "pilot")
        done = [t for t in pilots if t.status == DONE]
        if len(done) < 2:
            raise RuntimeError("fewer than 2 pilots trained; see the failed trials' errors")
        trunc = pick_truncation(
            [t.metrics["curve"] for t in done],
            self.candidates,
            self.full_examples,
            self.threshold,
            self.rank_by,
        )
        log.info(
            "truncation: %d examples (tau >= %.2f %s); taus %s",
            trunc.examples,
            self.threshold,
            "reached" if trunc.reached else "NOT reached: largest candidate",
            trunc.taus,
        )

        evaluated: list[Trial] = list(pilots)
        policy, rounds, r = None, [], 0
        while len(evaluated) < self.trials:
            stage = f"round{r}"
            if store.has_stage(stage):
                configs = [t.arch for t in store.trials(stage_prefix=stage) if t.stage == stage]
            else:
                scored = [(t, self._score(t, trunc.examples)) for t in evaluated]
                scored = [(t, s) for t, s in scored if math.isfinite(s)]
                configs, round_policy = self._propose(joint, scored, store, r)
                policy = round_policy or policy
            configs = configs[: self.trials - len(evaluated)]
            if not configs:
                log.warning("round %d proposed nothing new; stopping at %d", r, len(evaluated))
                break
            new = self._evaluate(store, evaluator, configs, trunc.examples, stage)
            evaluated += new
            scores = [self._score(t, trunc.examples) for t in new]
            rounds.append({"round": r, "evaluated": len(new), "best_score": min(scores)})
            log.info("round %d: %d trials, best score %.4f", r, len(new), min(scores))
            r += 1

        ranked = sorted(evaluated, key=lambda t: self._score(t, trunc.examples))
        top = [
            t.arch
            for t in ranked[: self.finalists]
            if math.isfinite(self._score(t, trunc.examples))
        ]
        finals = self._evaluate(store, evaluator, top, self.full_examples, "final")
        finals = sorted(
            [t for t in finals if t.status == DONE], key=lambda t: float(t.metrics["ne"])
        )
        if not finals:
            raise RuntimeError("every finalist failed; see the failed trials' errors")
        return self._outcome(
            joint, store, evaluated, finals, trunc, rounds, policy, cfg, output_dir
        )

    def _outcome(
        self,
        joint: JointSpace,
        store: TrialStore,
        evaluated: list[Trial],
        finals: list[Trial],
        trunc: Truncation,
        rounds: list[dict],
        policy: Any,
        cfg: DictConfig,
        output_dir: Path,
    ) -> SearchOutcome:
        best = finals[0]
        config: JointConfig = best.arch
        hp = joint.resolve(config)
        curve, running = [], math.inf
        table = []
        for i, t in enumerate(evaluated):
            score = self._score(t, trunc.examples)
            running = min(running, score)
            curve.append((i + 1, running))
            m = t.metrics or {}
            table.append(
                {
                    "id": t.id,
                    "stage": t.stage,
                    "budget": t.budget,
                    "status": t.status,
                    "score": score if math.isfinite(score) else None,
                    "ne": m.get("ne"),
                    "ne_extrap": m.get("ne_extrap"),
                    "fit_fallback": m.get("fit_fallback"),
                    "flops": m.get("flops"),
                    "examples_per_s": m.get("examples_per_s"),
                    "seconds": m.get("seconds"),
                    **{f"hp.{k}": v for k, v in joint.resolve(t.arch).items()},
                    "arch": t.arch.arch.to_dict(),
                    "curve": m.get("curve"),
                }
            )
        n_arch = joint.num_arch_decisions
        probs = policy.probs() if policy is not None else joint.priors()
        space_path = output_dir / "best_space.yaml"
        atomic_write_text(space_path, OmegaConf.to_yaml(joint.space_config(config)))
        retrain = [
            "model=arch",
            f"model.space={space_path.resolve()}",
            f"model.arch_file={(output_dir / 'best_arch.json').resolve()}",
            f"model.dropout={hp['dropout']}",
            f"module.lr={hp['lr']}",
            f"module.weight_decay={hp['weight_decay']}",
            f"module.emb_l2={hp['emb_l2']}",
            f"data.batch_size={hp['batch_size']}",
        ]
        atomic_write_text(output_dir / "retrain_overrides.txt", "\n".join(retrain) + "\n")
        low_fi = [t for t in evaluated if t.status == DONE and t.budget < self.full_examples]
        return SearchOutcome(
            arch=config.arch,
            probs=probs[:n_arch],
            curves={"best_score_vs_trials": curve},
            extra={
                "ne": float(best.metrics["ne"]),
                "hparams": hp,
                "searched_hparams": {k: list(v) for k, v in joint.hparams.items()},
                "flops": int(best.metrics["flops"]),
                "params": int(best.metrics["params"]),
                "strategy": self.strategy,
                "truncation": {
                    "examples": trunc.examples,
                    "full_examples": self.full_examples,
                    "threshold": self.threshold,
                    "rank_by": self.rank_by,
                    "reached": trunc.reached,
                    "taus": trunc.taus,
                },
                "fit_fallbacks": sum(bool(t.metrics.get("fit_fallback")) for t in low_fi),
                "low_fidelity_trials": len(low_fi),
                "rounds": rounds,
                "finalists": [
                    {
                        "config": t.arch.to_dict(),
                        "ne": float(t.metrics["ne"]),
                        "score": self._score(
                            next(e for e in evaluated if e.arch_key == t.arch_key),
                            trunc.examples,
                        ),
                    }
                    for t in finals
                ],
                "hparam_probs": {
                    d.name: [round(float(x), 6) for x in p.detach()]
                    for d, p in zip(joint.decisions[n_arch:], probs[n_arch:], strict=True)
                },
                "trials": table,
                "trial_counts": store.counts(),
                "store": store.display_url,
                "retrain_overrides": retrain,
            },
        )
