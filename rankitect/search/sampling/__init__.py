"""Sampling-based search: proxies, predictor, RL sampler (an Optuna sampler), successive
halving, trial store (an Optuna study)."""

from rankitect.search.sampling.evaluators import (
    EarlyStopProxy,
    Evaluator,
    SiGeoProxy,
    WeightSharingProxy,
)
from rankitect.search.sampling.halving import successive_halving
from rankitect.search.sampling.method import SamplingSearch, pareto_front
from rankitect.search.sampling.predictor import NeuralPredictor
from rankitect.search.sampling.proposers import RLSampler, propose_random
from rankitect.search.sampling.samplers import PredictorRLSampler, SamplingPlan, suggest_arch
from rankitect.search.sampling.store import TrialStore, arch_key

__all__ = [
    "EarlyStopProxy",
    "SiGeoProxy",
    "Evaluator",
    "NeuralPredictor",
    "PredictorRLSampler",
    "RLSampler",
    "SamplingPlan",
    "SamplingSearch",
    "TrialStore",
    "WeightSharingProxy",
    "arch_key",
    "pareto_front",
    "propose_random",
    "successive_halving",
    "suggest_arch",
]
