"""Rankitect's search space (paper §3.1): architectures, decisions, supernet and subnets."""

from rankitect.space.arch import Arch, ChoiceArch
from rankitect.space.blocks import LayerSettings
from rankitect.space.dhen import DHENArch, DHENSpace, DHENSupernet
from rankitect.space.factory import build_arch_model, build_supernet
from rankitect.space.space import ChoiceSpec, Decision, SearchSpace
from rankitect.space.spaces import build_space, generic_space, grown_space, load_space
from rankitect.space.subnet import SubnetModel, materialize
from rankitect.space.supernet import Supernet
from rankitect.space.transform import (
    ScaledDim,
    ScaleResult,
    merge_archs,
    scale_arch,
    widen_space,
)

__all__ = [
    "Arch",
    "ChoiceArch",
    "ChoiceSpec",
    "DHENArch",
    "DHENSpace",
    "DHENSupernet",
    "LayerSettings",
    "Decision",
    "ScaleResult",
    "ScaledDim",
    "SearchSpace",
    "SubnetModel",
    "Supernet",
    "build_arch_model",
    "build_space",
    "build_supernet",
    "generic_space",
    "grown_space",
    "load_space",
    "materialize",
    "merge_archs",
    "scale_arch",
    "widen_space",
]
