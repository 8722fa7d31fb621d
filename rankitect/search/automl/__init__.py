"""Predictor-based AutoML over architecture and hyper-parameters with learning-curve low
fidelity: the joint space, curve fitting, the curve evaluator and the search method."""

from rankitect.search.automl.curves import fit_power_law, pick_truncation, power_law
from rankitect.search.automl.evaluator import CurveEvaluator
from rankitect.search.automl.method import AutoMLSearch
from rankitect.search.automl.space import HPARAMS, JointConfig, JointSpace

__all__ = [
    "HPARAMS",
    "AutoMLSearch",
    "CurveEvaluator",
    "JointConfig",
    "JointSpace",
    "fit_power_law",
    "pick_truncation",
    "power_law",
]
