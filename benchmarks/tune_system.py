"""CubicML against the exhaustive grid and random search (docs/system.md).

Per model: the whole grid of system configurations is measured once with
``rankitect-tune-system tune.strategy=grid`` (skipped when ``<out>/<model>/results.json``
exists), then the predictor + RL search (``tune.strategy=predictor``) and random search run
with the same number of evaluations over that measured table, as a lookup, per seed:

    python benchmarks/tune_system.py --out outputs/bench/tune_system --seeds 0 1 2

Prints the grid's size and best, and per strategy the best found and its ratio to the grid's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from statistics import mean

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rankitect.cli.config import conf_dir
from rankitect.search.cubicml import (
    SystemSpace,
    best_of,
    default_trials,
    load_settings,
    render,
    tune,
)

# found by the README's quick start, `rankitect-search method=oneshot_rl` (seed 0)
ARCH = Path(__file__).resolve().parent / "data" / "oneshot_rl_synthetic_arch.json"
MODELS = {"dnn": ["model=dnn"], "arch": ["model=arch", f"model.arch_file={ARCH}"]}
# 2 x 2 x 2 x 2 x 2 x 2 = 64 configurations; the other settings as conf/tune_system.yaml has them
GRID = ["tune.search.batch_size=[512,4096]", "tune.warmup_steps=3", "tune.measure_steps=20",
        "tune.measure_seconds=3"]


def measure_grid(model: str, run_dir: Path) -> dict:
    results = run_dir / "results.json"
    if not results.is_file():
        command = [sys.executable, "-m", "rankitect.cli.tune_system", *MODELS[model], *GRID,
                   "tune.strategy=grid", f"hydra.run.dir={run_dir}"]  # fmt: skip
        print("measuring:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return json.loads(results.read_text())


def replay(model: str, grid: dict, seeds: list[int], trials: int | None) -> dict:
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("tune_system", overrides=[*MODELS[model], *GRID])
    t = cfg.tune
    space = SystemSpace(
        load_settings(OmegaConf.to_container(t.settings), OmegaConf.to_container(t.search))
    )
    table = {
        tuple(render(v) for v in row["settings"].values()): row for row in grid["trials"]
    }
    assert len(table) == space.size, "the measured grid does not match the searched settings"

    def lookup(config, index):
        row = table[tuple(render(v) for _, v in config.items)]
        return {"examples_per_s": row["examples_per_s"], "memory_mb": row["memory_mb"],
                "error": row["error"], "seconds": row["seconds"]}  # fmt: skip

    n = default_trials(space, trials, t.initial)
    out = {"grid_size": space.size, "trials": n, "grid_best": grid["best"]}
    for strategy in ("predictor", "random"):
        runs = []
        for seed in seeds:
            records = tune(space, lookup, strategy=strategy, trials=n, initial=t.initial,
                           round_size=t.round_size, predictor=OmegaConf.to_container(t.predictor),
                           sampler=OmegaConf.to_container(t.sampler), seed=seed)  # fmt: skip
            best = best_of(records)
            ratio = best.examples_per_s / grid["best"]["examples_per_s"]
            runs.append({"seed": seed, "settings": best.config.to_dict(),
                         "examples_per_s": best.examples_per_s, "ratio": ratio})  # fmt: skip
        out[strategy] = runs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/tune_system"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=None, help="default: 20%% of the grid")
    args = parser.parse_args()
    summary = {}
    for model in args.models:
        grid = measure_grid(model, args.out / model)
        summary[model] = res = replay(model, grid, args.seeds, args.trials)
        best = res["grid_best"]
        print(f"\n## {model}: grid of {res['grid_size']}, {res['trials']} evaluations per search")
        print(f"grid best: {best['examples_per_s']:,.0f} examples/s: {best['settings']}")
        print("| strategy | seed | best examples/s | / grid best | settings |")
        print("|---|---:|---:|---:|---|")
        for strategy in ("predictor", "random"):
            for r in res[strategy]:
                print(f"| {strategy} | {r['seed']} | {r['examples_per_s']:,.0f} | "
                      f"{r['ratio']:.3f} | {r['settings']} |")  # fmt: skip
            ratios = [r["ratio"] for r in res[strategy]]
            print(f"| {strategy} | mean | | {mean(ratios):.3f} (min {min(ratios):.3f}) | |")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
