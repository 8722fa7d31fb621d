"""rankitect.callbacks: the search algorithms as Lightning callbacks (built from
``conf/callbacks/method/``), and the progress display of ``conf/callbacks/progress.yaml``
(`rankitect.callbacks.progress`)."""

from rankitect.callbacks.flops_regularizer import FlopsRegularizer
from rankitect.callbacks.rl import RLSearchCallback
from rankitect.callbacks.temperature import GumbelTemperature

__all__ = ["FlopsRegularizer", "GumbelTemperature", "RLSearchCallback"]
