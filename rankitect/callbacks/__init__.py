"""rankitect.callbacks: the search algorithms as Lightning callbacks."""

from rankitect.callbacks.flops_regularizer import FlopsRegularizer
from rankitect.callbacks.rl import RLSearchCallback
from rankitect.callbacks.temperature import GumbelTemperature

__all__ = ["FlopsRegularizer", "GumbelTemperature", "RLSearchCallback"]
