"""Training-step throughput vs DataLoader throughput, side by side, on the synthetic data.

    python benchmarks/bench_step_vs_loader.py --models dlrm dnn --batch 1024 --steps 40

Data loading is the bottleneck only if the loader delivers fewer examples/s than a step
consumes; the ratio loader/step printed last must stay well above 1.
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rankitect.cli.config import conf_dir
from rankitect.lit import CTRModule


def loader_rate(loader, max_batches: int) -> float:
    n, start = 0, time.perf_counter()
    for i, (dense, _, _) in enumerate(loader):
        n += len(dense)
        if i + 1 == max_batches:
            break
    return n / (time.perf_counter() - start)


def step_rate(module: CTRModule, batches: list, steps: int) -> float:
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.train()
    for b in batches[:3]:  # warm-up
        module.training_step(b, 0).backward()
    n, start = 0, time.perf_counter()
    for i in range(steps):
        b = batches[i % len(batches)]
        opt.zero_grad()
        module.training_step(b, i).backward()
        opt.step()
        n += len(b[0])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dlrm", "dnn"])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.batch_size={args.batch}"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batches = [b for _, b in zip(range(args.steps), dm.train_dataloader(), strict=False)]
    loader = loader_rate(dm.train_dataloader(), max_batches=10**9)
    print(f"torch threads {args.threads}, batch {args.batch}, synthetic data")
    print(f"{'what':<28}{'examples/s':>14}{'loader / step':>16}")
    print(f"{'DataLoader, one epoch':<28}{loader:>14,.0f}")
    for name in args.models:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            mcfg = compose("train", overrides=[f"model={name}"]).model
        module = CTRModule(instantiate(mcfg)(spec=dm.feature_spec))
        module.log = lambda *a, **k: None  # no Trainer attached: logging is a no-op here
        rate = step_rate(module, batches, args.steps)
        print(f"{'train step, ' + name:<28}{rate:>14,.0f}{loader / rate:>15.1f}x")


if __name__ == "__main__":
    main()
