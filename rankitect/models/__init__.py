"""Hand-designed CTR baselines built from small composable modules."""

from rankitect.models.base import CTRModel
from rankitect.models.blocks import (
    MLP,
    CrossNetV2,
    DotInteraction,
    FactorizationMachine,
    FirstOrder,
    make_activation,
)
from rankitect.models.dcnv2 import DCNv2
from rankitect.models.deepfm import DeepFM
from rankitect.models.dhen import DHEN, INTERACTION_MODULES, register_module
from rankitect.models.dlrm import DLRM
from rankitect.models.dnn import DNN
from rankitect.models.embedding import FeatureEmbedding
from rankitect.models.lr import LR

__all__ = [
    "CTRModel",
    "CrossNetV2",
    "DCNv2",
    "DHEN",
    "DLRM",
    "DNN",
    "DeepFM",
    "DotInteraction",
    "FactorizationMachine",
    "FeatureEmbedding",
    "FirstOrder",
    "INTERACTION_MODULES",
    "LR",
    "MLP",
    "make_activation",
    "register_module",
]
