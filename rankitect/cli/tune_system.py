"""`rankitect-tune-system`: find the fastest training-system configuration of a model (CubicML)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rankitect.cli.config import conf_dir
from rankitect.cli.entry import console_script
from rankitect.search.cubicml import run


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="tune_system")
@console_script("rankitect-tune-system")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    results = run(cfg, hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task))
    # what a Hydra sweeper would maximise: the best throughput
    return results["best"]["examples_per_s"] if results["best"] else None


if __name__ == "__main__":
    main()
