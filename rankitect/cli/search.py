"""`rankitect-search`: search an architecture (`method=oneshot_rl|dnas`) and write it out."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rankitect.cli.config import conf_dir
from rankitect.cli.entry import console_script
from rankitect.search.run import search


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="search")
@console_script("rankitect-search")
def main(cfg: DictConfig) -> float | None:
    results = search(cfg, HydraConfig.get().runtime.output_dir)
    return results.get("flops")


if __name__ == "__main__":
    main()
