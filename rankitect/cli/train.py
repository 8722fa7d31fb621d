"""`rankitect-train`: train one CTR model (a baseline or an architecture) and write results.json."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rankitect.cli.config import conf_dir
from rankitect.cli.entry import console_script
from rankitect.train import train


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
@console_script("rankitect-train")
def main(cfg: DictConfig) -> float:
    results = train(cfg, HydraConfig.get().runtime.output_dir)
    # The returned value is what Hydra sweepers optimise.
    return float(results["val"]["ne"])


if __name__ == "__main__":
    main()
