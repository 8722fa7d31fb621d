"""How well a space's architectures train, under its layer settings and under others.

    python benchmarks/space_trainability.py --space rankitect_frappe --data frappe \
        --archs 20 --epochs 2 --layers space paper

Samples ``--archs`` random architectures of the space (seeded; the same ones for every
setting), trains each from scratch for ``--epochs`` epochs (Adam, the data config's batch
size, lr 1e-3, the settings' dropout and embedding L2) and reports the median, min and max
validation AUC and NE per layer setting. ``space``: the space's own `LayerSettings`;
``paper``: LayerNorm, PyTorch's default initialisation, no dropout or embedding L2 (the blocks
before the settings existed); ``layer_xavier``: LayerNorm with the xavier/zero-bias init;
``batch_torch``: BatchNorm with PyTorch's default init.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from sampling_common import setup  # noqa: E402

from rankitect.metrics import normalized_entropy  # noqa: E402
from rankitect.metrics.ranking import make_auroc  # noqa: E402
from rankitect.space import materialize  # noqa: E402
from rankitect.space.blocks import LayerSettings  # noqa: E402

SETTINGS = {
    "space": lambda s: s,
    "paper": lambda s: LayerSettings(norm="layer", init="torch"),
    "layer_xavier": lambda s: replace(s, norm="layer"),
    "batch_torch": lambda s: replace(s, init="torch"),
}


@torch.no_grad()
def evaluate(model, loader) -> tuple[float, float]:
    model.eval()
    probs, labels = [], []
    for dense, sparse, label in loader:
        probs.append(torch.sigmoid(model(dense, sparse)))
        labels.append(label)
    p, y = torch.cat(probs), torch.cat(labels)
    return float(make_auroc()(p, y.long())), float(normalized_entropy(p, y))


def train(model, dm, epochs: int, lr: float) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        for dense, sparse, label in dm.train_dataloader():
            loss = F.binary_cross_entropy_with_logits(model(dense, sparse), label)
            loss = loss + model.regularization_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return evaluate(model, dm.val_dataloader())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="rankitect")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--archs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", nargs="+", default=["space", "paper"], choices=SETTINGS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the data config")
    args = parser.parse_args()
    dm, space = setup(args.data, args.space, args.overrides)
    gen = torch.Generator().manual_seed(args.seed)
    archs = [space.sample(gen) for _ in range(args.archs)]
    own = space.layer
    print(
        f"{args.space} on {args.data}: {args.archs} sampled architectures, {args.epochs} "
        f"epochs each, seed {args.seed}"
    )
    print("| layer settings | median val AUC | min | max | median val NE | CPU s |")
    print("|---|---|---|---|---|---|")
    for name in args.layers:
        space.layer = SETTINGS[name](own)
        start = time.process_time()
        results = []
        for i, arch in enumerate(archs):
            torch.manual_seed(args.seed + i)
            results.append(train(materialize(space, arch), dm, args.epochs, args.lr))
        aucs, nes = [r[0] for r in results], [r[1] for r in results]
        print(
            f"| {name} ({space.layer.norm}, {space.layer.init}) | "
            f"{statistics.median(aucs):.4f} | {min(aucs):.4f} | {max(aucs):.4f} | "
            f"{statistics.median(nes):.4f} | {time.process_time() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
