"""Issue 16, item 2: the paper's predictor + RL sampler against Optuna's TPE and random samplers,
in the same sampling-search harness: best proxy NE found against the number of trials.

    python benchmarks/sampler_comparison.py --out /tmp/samplers --data synthetic frappe \
        --seeds 0 1 2 --trials 100

Per (data, sampler, seed) one `method=sampling` search with ``--trials`` sampled trials
(``--initial`` random, then rounds of ``--round``), scored by the early-stop proxy at
``--budget`` examples, in its own store under ``--out``; one worker (the proposer itself), so the
runs are sequential and seeded. The halving is one rung at the proxy budget, which evaluates
nothing new. A finished run's store is read back, so the script resumes after a stop. The score
is the proxy's NE: progressive validation on the training stream (each batch predicted before
its step, over the last 25% of the budget), out of sample within one pass. Prints, per data and
sampler, the best NE after 10, 25, 50 and all trials (mean ± sd over seeds) and how often each
sampler's best is the lowest; writes ``<out>/sampler_comparison.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from sampling_common import plot, save

from rankitect.cli.config import conf_dir
from rankitect.search.sampling import TrialStore
from rankitect.space import load_space

SAMPLERS = ("predictor_rl", "tpe", "random")


def search_config(data: str, sampler: str, seed: int, args: argparse.Namespace):
    rounds = 1 + math.ceil((args.trials - args.initial) / args.round)
    overrides = [
        f"data={data}",
        "search_space=rankitect",
        "method=sampling",
        f"method/sampler={sampler}",
        f"seed={seed}",
        "method.workers=0",
        f"method.rounds={rounds}",
        f"method.initial_size={args.initial}",
        f"method.round_size={args.round}",
        f"method.proxy_budget={args.budget}",
        "method.halving.top_k=1",
        f"method.halving.budgets=[{args.budget}]",
        "method.halving.finalists=1",
    ]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("search", overrides=overrides)


def best_so_far(values: list[float]) -> list[float]:
    out, best = [], math.inf
    for v in values:
        best = min(best, v)
        out.append(best)
    return out


def run_one(data: str, sampler: str, seed: int, args, datamodule, space) -> list[float]:
    cfg = search_config(data, sampler, seed, args)
    run_dir = args.out / data / f"{sampler}_s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.method.store = f"sqlite:///{(run_dir / 'trials.db').resolve()}"
    instantiate(cfg.method).run(space, datamodule, cfg, run_dir)
    store = TrialStore(cfg.method.store)
    trials = store.trials(stage_prefix="round", budget=args.budget)[: args.trials]
    store.close()
    ne = [t.metrics["ne"] if t.status == "done" else math.inf for t in trials]
    return best_so_far(ne)


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/sampler_comparison"))
    parser.add_argument("--data", nargs="+", default=["synthetic", "frappe"])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--round", type=int, default=10)
    parser.add_argument("--budget", type=int, default=8192)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    curves: dict[str, dict[str, list[list[float]]]] = {}
    for data in args.data:
        cfg = search_config(data, SAMPLERS[0], 0, args)
        dm = instantiate(cfg.data)
        dm.prepare_data()
        dm.setup("fit")
        space = load_space(cfg.search_space, dm.feature_spec)
        curves[data] = {
            s: [run_one(data, s, seed, args, dm, space) for seed in args.seeds]
            for s in args.samplers
        }
    checkpoints = [n for n in (10, 25, 50) if n < args.trials] + [args.trials]
    print(f"best proxy NE after n trials, mean ± sd over seeds {args.seeds}")
    print("| data | sampler | " + " | ".join(f"n={n}" for n in checkpoints) + " | lowest best |")
    print("|---|---|" + "---|" * (len(checkpoints) + 1))
    for data, by_sampler in curves.items():
        finals = {s: [c[-1] for c in runs] for s, runs in by_sampler.items()}
        for s, runs in by_sampler.items():
            wins = sum(
                finals[s][i] == min(f[i] for f in finals.values()) for i in range(len(args.seeds))
            )
            cells = [spread([c[min(n, len(c)) - 1] for c in runs]) for n in checkpoints]
            print(f"| {data} | {s} | " + " | ".join(cells) + f" | {wins}/{len(args.seeds)} |")
    save(args.out, "sampler_comparison", {"args": vars(args) | {"out": str(args.out)},
                                          "curves": curves})  # fmt: skip
    for data, by_sampler in curves.items():

        def draw(ax, by_sampler=by_sampler, data=data):
            for s, runs in by_sampler.items():
                n = min(len(c) for c in runs)
                mean = [statistics.mean(c[i] for c in runs) for i in range(n)]
                ax.plot(range(1, n + 1), mean, label=s)
            ax.set_xlabel("trials")
            ax.set_ylabel("best proxy NE so far (mean over seeds)")
            ax.set_title(data)

        plot(args.out / f"sampler_comparison_{data}.png", draw)


if __name__ == "__main__":
    main()
