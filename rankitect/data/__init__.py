"""CTR data: feature spec, readers, synthetic generator, preprocessing cache, data module."""

from rankitect.data.spec import FeatureSpec

__all__ = ["FeatureSpec"]
