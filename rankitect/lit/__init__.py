"""LightningModules: CTRModule trains any CTR model; SupernetModule co-trains a supernet and an
in-place baseline for one-shot search; DNASModule runs Gumbel-softmax DNAS."""

from rankitect.lit.ctr_module import CTRModule
from rankitect.lit.dnas_module import DNASModule
from rankitect.lit.supernet_module import SupernetModule

__all__ = ["CTRModule", "DNASModule", "SupernetModule"]
