"""Hand-designed CTR baselines built from small composable modules."""

from rankitect.models.embedding import FeatureEmbedding

__all__ = ["FeatureEmbedding"]
