"""LightningModules: CTRModule trains any CTR model."""

from rankitect.lit.ctr_module import CTRModule

__all__ = ["CTRModule"]
