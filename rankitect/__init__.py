"""Rankitect: neural architecture search for CTR and conversion ranking models."""

from omegaconf import OmegaConf

__version__ = "0.1.0"


def _output_dir() -> str:
    """``${rankitect.output_dir:}`` (``paths.output_dir`` of conf/paths/default.yaml): Hydra's
    ``runtime.output_dir`` in a Hydra run; ``.`` in a config composed outside one (the compose
    API, a notebook) or printed by ``--cfg job --resolve`` (no run: no run directory), where
    ``${hydra:...}`` would not resolve at all. `rankitect.train.train` and
    `rankitect.search.run.search` set ``paths.output_dir`` to the directory they write to."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or OmegaConf.is_missing(
        HydraConfig.get().runtime, "output_dir"
    ):
        return "."
    return str(HydraConfig.get().runtime.output_dir)


OmegaConf.register_new_resolver("rankitect.output_dir", _output_dir, replace=True)
