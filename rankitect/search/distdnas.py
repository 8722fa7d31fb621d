"""DistDNAS (``../shared/papers/related_abstracts.txt``): DNAS distributed over data shards.

The training data is split into ``shards`` contiguous row ranges (`CTRDataModule` ``shard``);
one DNAS search per shard runs in its own process, in parallel and without any weight
synchronisation; the shards' decision distributions are then aggregated into one architecture
(the mean of the probabilities, or of the logits), which the parent run finalises like any
other method's (conf/final). With ``cost: linear`` the FLOPs term is the cost-aware loss
``alpha * E[FLOPs] / c``, which charges every FLOP instead of the distance to a target.

Each shard is an ordinary `rankitect-search` run under ``<run>/shards/<i>/`` (its own
``results.json``, ``best_arch.json`` and checkpoints): a finished shard is read back and a
killed one resumes from its last checkpoint when the parent is run again.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rankitect.io import atomic_write_text
from rankitect.search.dnas import DNAS
from rankitect.search.outcome import SearchOutcome
from rankitect.search.run import search
from rankitect.space.space import SearchSpace

log = logging.getLogger(__name__)

AGGREGATES = ("probs", "logits")


def aggregate(
    space: SearchSpace, shard_probs: Sequence[Mapping[str, Sequence[float]]], how: str = "probs"
) -> list[torch.Tensor]:
    """One distribution per decision from the shards' ``decision_probs`` (name -> probs):
    the mean of the probabilities, or the softmax of the mean log-probabilities (the mean of
    the logits, up to a constant per decision that softmax removes)."""
    if how not in AGGREGATES:
        raise ValueError(f"method.aggregate must be one of {AGGREGATES}, got {how!r}")
    out = []
    for d in space.decisions:
        missing = [i for i, p in enumerate(shard_probs) if d.name not in p]
        if missing:
            raise ValueError(f"shard(s) {missing} have no decision {d.name!r}: another space?")
        p = torch.tensor([list(s[d.name]) for s in shard_probs], dtype=torch.float64)
        if how == "probs":
            out.append(p.mean(0) / p.mean(0).sum())
        else:
            out.append(torch.softmax(p.clamp_min(1e-12).log().mean(0), 0))
    return out


def mode(space: SearchSpace, probs: Sequence[torch.Tensor]) -> Any:
    """The most likely architecture of per-decision distributions."""
    return space.decode(torch.stack([p.argmax() for p in probs]))


class DistDNAS:
    """`method=distdnas`: ``shards`` DNAS searches on disjoint shards of the training data,
    ``parallel`` processes at a time (default: all), each with ``threads`` torch threads
    (default: the CPUs over the processes), aggregated by ``aggregate``.

    Every other key is a `DNAS` option (conf/method/dnas.yaml), used by every shard.
    """

    name = "distdnas"

    def __init__(
        self,
        shards: int = 2,
        aggregate: str = "probs",
        parallel: int | None = None,
        threads: int | None = None,
        **dnas: Any,
    ) -> None:
        for key, value in (("shards", shards), ("parallel", parallel), ("threads", threads)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"method.{key} must be an int >= 1, got {value!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"method.aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        DNAS(**dnas)  # every DNAS option checked here, before any shard starts
        self.shards, self.how = shards, aggregate
        self.parallel = min(parallel or shards, shards)
        self.threads = threads or max(1, len(os.sched_getaffinity(0)) // self.parallel)
        self.dnas = {"_target_": f"{DNAS.__module__}.DNAS", **dnas}

    def shard_config(self, cfg: DictConfig, index: int) -> DictConfig:
        """The `rankitect-search` config of shard ``index``: this run's, with DNAS as the
        method, the data's ``shard`` set, no final stage, resuming its own checkpoint."""
        shard = OmegaConf.to_container(cfg, resolve=True)
        shard.pop("hydra", None)
        # each shard's paths.output_dir (the checkpoints' dirpath) is its own run directory
        shard.get("paths", {}).pop("output_dir", None)
        if "callbacks" in cfg:
            shard["callbacks"] = OmegaConf.to_container(cfg.callbacks, resolve=False)
        shard["method"] = dict(self.dnas)
        shard["data"]["shard"] = {"index": index, "count": self.shards}
        shard["final"] = {**shard.get("final", {}), "enabled": False}
        shard["resume"] = "auto"
        return OmegaConf.create(shard)

    def run(
        self, space: SearchSpace, datamodule: Any, cfg: DictConfig, output_dir: Path
    ) -> SearchOutcome:
        del datamodule  # each shard loads its own rows
        if self.dnas.get("target_flops") is None and not getattr(space, "has_seed", False):
            raise ValueError(
                f"method.target_flops: null means the seed architecture's FLOPs, but space "
                f"{space.name!r} has no seed; give a number"
            )
        dirs = [Path(output_dir) / "shards" / str(i) for i in range(self.shards)]
        todo = [i for i, d in enumerate(dirs) if not (d / "results.json").is_file()]
        started = time.perf_counter()
        for batch in range(0, len(todo), self.parallel):
            self._launch([(i, dirs[i]) for i in todo[batch : batch + self.parallel]], cfg)
        wall = round(time.perf_counter() - started, 2)
        shards = [json.loads((d / "results.json").read_text()) for d in dirs]
        probs = aggregate(space, [s["decision_probs"] for s in shards], self.how)
        arch = mode(space, probs)
        picks = [space.values(space.arch_from_json(json.dumps(s["arch"]))) for s in shards]
        agree = int((torch.stack(picks) == torch.stack(picks)[0]).all(0).sum())
        log.info(
            "distdnas: %d shards aggregated by %s: %d FLOPs; the shards' own picks %s, "
            "agreeing on %d of %d decisions",
            self.shards,
            self.how,
            space.flops(arch),
            [s["flops"] for s in shards],
            agree,
            len(space.decisions),
        )
        return SearchOutcome(
            arch=arch,
            probs=[p.float() for p in probs],
            extra={
                "target_flops": shards[0].get("target_flops"),
                "aggregate": self.how,
                "shard_agreement": agree / len(space.decisions),
                "shards": [
                    {
                        "dir": str(d),
                        "flops": s["flops"],
                        "search_seconds": s.get("search_seconds"),
                        "search_cpu_seconds": s.get("search_cpu_seconds"),
                    }
                    for d, s in zip(dirs, shards, strict=True)
                ],
                "shards_wall_seconds": wall,
            },
        )

    def _launch(self, jobs: list[tuple[int, Path]], cfg: DictConfig) -> None:
        """Run the shards ``jobs`` as parallel processes and wait for all of them."""
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        procs = []
        for index, run_dir in jobs:
            run_dir.mkdir(parents=True, exist_ok=True)
            config = run_dir / "shard_config.yaml"
            atomic_write_text(config, OmegaConf.to_yaml(self.shard_config(cfg, index)))
            log_file = (run_dir / "search.log").open("a")
            cmd = [sys.executable, "-m", __name__, str(config), str(run_dir)]
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=log_file, env=env)
            procs.append((index, run_dir, proc, log_file))
            log.info("distdnas: shard %d of %d started in %s", index, self.shards, run_dir)
        failed = []
        for index, run_dir, proc, log_file in procs:
            proc.wait()
            log_file.close()
            if proc.returncode != 0:
                failed.append(
                    f"shard {index} (exit {proc.returncode}, log {run_dir / 'search.log'})"
                )
        if failed:
            raise RuntimeError(
                f"distdnas: {', '.join(failed)} failed; rerun the same command with "
                f"hydra.run.dir=<this run> to resume the shards that did not finish"
            )


def main(argv: Sequence[str] | None = None) -> None:
    """One shard: ``python -m rankitect.search.distdnas <shard_config.yaml> <run dir>``."""
    config, run_dir = argv or sys.argv[1:]
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    search(OmegaConf.load(config), run_dir)


if __name__ == "__main__":
    main()
