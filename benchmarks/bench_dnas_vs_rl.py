"""Steps to reach a FLOPs target: DNAS's Gumbel-softmax gradient vs one-shot RL's REINFORCE.

    python benchmarks/bench_dnas_vs_rl.py --seeds 3 --max-steps 1000

The paper (§4.2.4) drives both methods by the FLOPs cost alone (no NE term) and reports that
DNAS needs ~26x fewer SGD steps to converge to a FLOPs target. Here both run on the same
space (the shipped Rankitect space on the default synthetic data's features) towards the same
target, with no supernet training, counting training steps (one batch, one SGD step of the
weights in a real search) as each method spends them, on ``--ranks`` DDP ranks:

- DNAS (``conf/method/dnas.yaml``): every step, one Adam step on ``theta`` of
  `FlopsRegularizer`'s Eq. 9 loss ``E_a[|FLOPs(a) - c|] / c`` over ``flops_max_realisations``
  Gumbel-softmax realisations per rank (per-example sampling), at a fixed temperature;
- one-shot RL (``conf/method/oneshot_rl.yaml``): every step, one architecture per rank drawn
  from the policy; every ``samples_per_update`` architectures, one `PolicyLearner.update`
  (REINFORCE plus ``off_policy_updates`` replayed steps) with reward
  ``Cost(a) = |FLOPs(a) - c| / c`` (lower is better).

Both start from the space's prior and use their configs' learning rates. A run has converged
at the first step from which a FLOPs figure stays within a tolerance of the target up to
``--max-steps``; a run that never settles counts as ``--max-steps`` (the median is then a lower
bound). Two figures are tracked: the FLOPs of the most likely architecture (what the search
exports; it moves in jumps as near-tied decisions flip) and the expected FLOPs under the
decision probabilities (`SearchSpace.expected_flops`, the distribution as a whole). Printed
per target, figure, tolerance and method: the converged step of every seed and the median,
then the ratio RL / DNAS of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from omegaconf import OmegaConf

from rankitect.callbacks import FlopsRegularizer
from rankitect.cli.config import conf_dir
from rankitect.data import SyntheticCTR
from rankitect.lit import DNASModule
from rankitect.search.policy import CategoricalPolicy
from rankitect.search.reinforce import PolicyLearner, flops_cost, seeded_generator
from rankitect.space import SearchSpace, load_space


def method_config(name: str) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "method" / f"{name}.yaml"))
    return cfg.get("method", cfg)  # dnas.yaml nests its keys under `method`


def settled_step(flops: list[float], target: float, tolerance: float) -> int | None:
    """Steps done when the FLOPs entered the tolerance band for good; None if they never did."""
    outside = [i for i, f in enumerate(flops) if abs(f - target) > tolerance * target]
    if outside and outside[-1] == len(flops) - 1:
        return None
    return outside[-1] + 2 if outside else 1


Trace = dict[str, list[float]]


def track(trace: Trace, space: SearchSpace, policy: CategoricalPolicy) -> None:
    trace["most likely"].append(space.flops(policy.most_likely()))
    with torch.no_grad():
        trace["expected"].append(float(space.expected_flops(policy.probs())))


def run_dnas(space: SearchSpace, target: float, args, seed: int, hard: bool) -> Trace:
    cfg = method_config("dnas")
    realisations = cfg["flops_max_realisations"] * args.ranks
    module = DNASModule(
        space, sampling="example", hard=hard, temperature=args.temperature, seed=seed
    )
    reg = FlopsRegularizer(
        target, estimator=cfg["flops_estimator"], kind=cfg["cost"], max_realisations=realisations
    )
    opt = torch.optim.Adam([module.arch.logits], lr=cfg["arch_lr"])
    trace: Trace = {"most likely": [], "expected": []}
    for step in range(args.max_steps):
        opt.zero_grad()
        reg.loss(module, module.relax(step, realisations)).backward()
        opt.step()
        track(trace, space, module.arch)
    return trace


def run_rl(space: SearchSpace, target: float, args, seed: int) -> Trace:
    cfg = method_config("oneshot_rl")
    policy = CategoricalPolicy(space, init=cfg["policy_init"])
    learner = PolicyLearner(
        policy,
        optimizer=cfg["policy_optimizer"],
        lr=cfg["policy_lr"],
        off_policy_updates=cfg["off_policy_updates"],
        replay_capacity=cfg["replay_capacity"],
        is_clip=cfg["is_clip"],
        seed=seed,
    )
    pending: list[torch.Tensor] = []
    trace: Trace = {"most likely": [], "expected": []}
    for step in range(args.max_steps):
        pending.extend(policy.sample(args.ranks, seeded_generator(seed, step)))
        if len(pending) >= cfg["samples_per_update"]:
            values, pending = torch.stack(pending), []
            flops = torch.tensor([float(space.flops(space.decode(v))) for v in values])
            learner.update(values, flops_cost(flops, target, cfg["cost"]))
        track(trace, space, policy)
    return trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="rankitect")
    parser.add_argument("--targets", default="0.5,2.0", help="multiples of the seed's FLOPs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--ranks", type=int, default=1, help="simulated DDP ranks")
    parser.add_argument("--tolerances", default="0.05,0.1")
    parser.add_argument("--temperature", type=float, default=1.0, help="DNAS, fixed")
    args = parser.parse_args()
    torch.set_num_threads(1)

    space = load_space(args.space, SyntheticCTR().spec)
    seed_flops = space.flops(space.seed_arch())
    print(
        f"space {space}; seed FLOPs {seed_flops}; prior most likely FLOPs "
        f"{space.flops(CategoricalPolicy(space).most_likely())}"
    )
    runners: dict[str, Callable] = {
        "dnas (soft)": partial(run_dnas, hard=False),
        "dnas (straight-through)": partial(run_dnas, hard=True),
        "one-shot rl": run_rl,
    }
    tolerances = [float(t) for t in args.tolerances.split(",")]
    for multiple in (float(m) for m in args.targets.split(",")):
        target = multiple * seed_flops
        print(f"\ntarget {multiple}x the seed's FLOPs = {target:.0f}")
        medians: dict[tuple[str, str, float], float] = {}
        for name, run in runners.items():
            start = time.perf_counter()
            traces = [run(space, target, args, seed) for seed in range(args.seeds)]
            for figure in ("most likely", "expected"):
                for tol in tolerances:
                    steps = [settled_step(t[figure], target, tol) for t in traces]
                    key = (name, figure, tol)
                    medians[key] = statistics.median(
                        args.max_steps if s is None else s for s in steps
                    )
                    shown = ", ".join(f">{args.max_steps}" if s is None else str(s) for s in steps)
                    print(
                        f"  {name:24s} {figure:11s} FLOPs within {tol:4.0%}: steps [{shown}], "
                        f"median {medians[key]:.0f}"
                    )
            print(f"  {name:24s} ({time.perf_counter() - start:.0f} s)", flush=True)
        for (name, figure, tol), median in medians.items():
            if name.startswith("dnas"):
                ratio = medians["one-shot rl", figure, tol] / median
                print(f"  {figure:11s} within {tol:4.0%}: RL / {name} median steps = {ratio:.1f}")


if __name__ == "__main__":
    main()
