"""Training-step cost of the supernet against materialised subnets.

    python benchmarks/bench_supernet.py --space rankitect --archs 20 --batch 1024

1. For each of ``--archs`` random architectures: the median time of a training step
   (forward, BCE loss, backward, Adam step) of the supernet under the architecture's hard
   masks, and of its materialised subnet (weights transferred), steps interleaved so both
   see the same machine load; reports the median ratio (target <= 1.3).
2. The whole supernet (all masks on) against the seed model (or the largest architecture
   when the space has no seed).
3. Memory of one training step, counted tensor by tensor: parameters, gradients, Adam state
   and activations (the distinct storages autograd saves for backward, found with
   ``saved_tensors_hooks``; parameter storages excluded). Allocator overhead and transient
   buffers freed inside an op are not included.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from rankitect.data import FeatureSpec
from rankitect.space import Arch, SearchSpace, Supernet, load_space, materialize


def make_space(args: argparse.Namespace) -> SearchSpace:
    return load_space(args.space, FeatureSpec(args.n_dense, (args.cardinality,) * args.n_sparse))


def make_batch(space: SearchSpace, batch: int, device: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    card = space.spec.sparse_cardinalities[0] if space.spec.n_sparse else 1
    dense = torch.randn(batch, space.spec.n_dense, generator=gen)
    sparse = torch.randint(0, card, (batch, space.spec.n_sparse), generator=gen)
    labels = (torch.rand(batch, generator=gen) < 0.25).float()
    return dense.to(device), sparse.to(device), labels.to(device)


def reference_arch(space: SearchSpace) -> Arch:
    return space.seed_arch() if space.has_seed else space.largest()


def train_step(model, opt, batch, **kwargs) -> float:
    """Seconds of one forward + BCE + backward + optimiser step."""
    dense, sparse, labels = batch
    if labels.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = F.binary_cross_entropy_with_logits(model(dense, sparse, **kwargs), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if labels.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def paired_medians(first, second, warmup: int, steps: int) -> tuple[float, float]:
    """Median seconds of two step functions, interleaved step by step."""
    for _ in range(warmup):
        first()
        second()
    a, b = [], []
    for _ in range(steps):
        a.append(first())
        b.append(second())
    return statistics.median(a), statistics.median(b)


def bench_masks(args: argparse.Namespace, space: SearchSpace, batch) -> None:
    net = Supernet(space).to(args.device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    ratios = []
    print(f"{'arch':>4} {'MFLOPs/ex':>10} {'supernet ms':>12} {'subnet ms':>10} {'ratio':>6}")
    for i in range(args.archs):
        arch = space.sample(gen)
        subnet = materialize(space, arch, net).to(args.device)
        sub_opt = torch.optim.Adam(subnet.parameters(), lr=1e-3)
        t_super, t_sub = paired_medians(
            lambda arch=arch: train_step(net, opt, batch, arch=arch),
            lambda subnet=subnet, sub_opt=sub_opt: train_step(subnet, sub_opt, batch),
            args.warmup,
            args.steps,
        )
        ratios.append(t_super / t_sub)
        print(
            f"{i:>4} {space.flops(arch) / 1e6:>10.3f} {t_super * 1e3:>12.2f} "
            f"{t_sub * 1e3:>10.2f} {ratios[-1]:>6.2f}"
        )
    print(
        f"supernet (hard masks) / subnet step time over {args.archs} archs: median "
        f"{statistics.median(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}"
    )

    ref = reference_arch(space)
    model = materialize(space, ref, net).to(args.device)
    ref_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t_whole, t_ref = paired_medians(
        lambda: train_step(net, opt, batch),
        lambda: train_step(model, ref_opt, batch),
        args.warmup,
        args.steps,
    )
    name = "seed model" if space.has_seed else "largest arch"
    print(
        f"whole supernet step {t_whole * 1e3:.1f} ms vs {name} {t_ref * 1e3:.2f} ms "
        f"({t_whole / t_ref:.1f}x)"
    )


def step_memory(model, batch, **kwargs) -> dict[str, int]:
    """Bytes held by one training step: parameters, gradients, Adam state, and activations
    (distinct storages saved for backward, parameter storages excluded)."""
    dense, sparse, labels = batch
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.binary_cross_entropy_with_logits(model(dense, sparse, **kwargs), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {
        "parameters": sum(p.nbytes for p in model.parameters()),
        "gradients": sum(p.grad.nbytes for p in model.parameters() if p.grad is not None),
        "adam state": sum(
            t.nbytes for st in opt.state.values() for t in st.values() if torch.is_tensor(t)
        ),
        "activations": sum(saved.values()),
    }


def bench_memory(args: argparse.Namespace, space: SearchSpace, batch) -> None:
    ref = reference_arch(space)
    name = "seed" if space.has_seed else "largest"
    configs = {
        f"{name} subnet": (materialize(space, ref), {}),
        f"supernet, {name} arch masks": (Supernet(space), {"arch": ref}),
        "whole supernet": (Supernet(space), {}),
    }
    print("memory of one training step (MiB):")
    for label, (model, kwargs) in configs.items():
        parts = step_memory(model.to(args.device), batch, **kwargs)
        cells = "  ".join(f"{k} {v / 2**20:7.2f}" for k, v in parts.items())
        print(f"{label:>28}: {cells}  total {sum(parts.values()) / 2**20:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="rankitect")
    parser.add_argument("--archs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per architecture")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--n-dense", type=int, default=13)
    parser.add_argument("--n-sparse", type=int, default=10)
    parser.add_argument("--cardinality", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    space = make_space(args)
    print(
        f"space {space.name} (10^{space.log10_size:.1f} archs), batch {args.batch}, "
        f"device {args.device}, {args.threads} threads, torch {torch.__version__}"
    )
    batch = make_batch(space, args.batch, args.device, args.seed)
    bench_masks(args, space, batch)
    bench_memory(args, space, batch)


if __name__ == "__main__":
    main()
