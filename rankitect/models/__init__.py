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
from rankitect.models.dlrm import DLRM
from rankitect.models.dnn import DNN
from rankitect.models.embedding import FeatureEmbedding
from rankitect.models.lr import LR

__all__ = [
    "CTRModel",
    "CrossNetV2",
    "DCNv2",
    "DLRM",
    "DNN",
    "DeepFM",
    "DotInteraction",
    "FactorizationMachine",
    "FeatureEmbedding",
    "FirstOrder",
    "LR",
    "MLP",
    "make_activation",
]
