"""Rankitect: neural architecture search for CTR and conversion ranking models."""

__version__ = "0.1.0"
