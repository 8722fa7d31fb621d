"""Rankitect's search space (paper §3.1): architectures, decisions, supernet and subnets."""

from rankitect.space.arch import Arch, ChoiceArch
from rankitect.space.factory import build_arch_model
from rankitect.space.space import ChoiceSpec, Decision, SearchSpace
from rankitect.space.spaces import build_space, generic_space, grown_space, load_space
from rankitect.space.subnet import SubnetModel, materialize
from rankitect.space.supernet import Supernet

__all__ = [
    "Arch",
    "ChoiceArch",
    "ChoiceSpec",
    "Decision",
    "SearchSpace",
    "SubnetModel",
    "Supernet",
    "build_arch_model",
    "build_space",
    "generic_space",
    "grown_space",
    "load_space",
    "materialize",
]
