"""Figure 4: Kendall tau between each low-cost proxy and a longer-trained ground truth, against
the proxy's data budget (early-stop vs weight-sharing proxy).

    python benchmarks/sampling_proxy_quality.py --data frappe --space rankitect --archs 24 \
        --budgets 5000 10000 20000 50000 100000 --truth-examples 400000 \
        --pretrain-examples 200000 --out outputs/bench/sampling_proxy

Ground truth: each architecture trained from scratch on ``--truth-examples`` examples, scored by
its NE on the validation split. Intervals are the 25%-75% quantiles of tau over bootstrap
resamples of the architectures (as the paper's Figure 4).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sampling_common import plot, save, setup  # noqa: E402

from rankitect.metrics import kendall_tau, normalized_entropy  # noqa: E402
from rankitect.search.sampling import EarlyStopProxy, WeightSharingProxy, propose_random  # noqa: E402
from rankitect.search.sampling.evaluators import train_window_ne  # noqa: E402
from rankitect.space.subnet import materialize  # noqa: E402


def truth_ne(space, dm, arch, examples, batch_size, lr, seed) -> float:
    torch.manual_seed(seed)
    model = materialize(space, arch)
    train_window_ne(model, dm.split("train"), examples, batch_size=batch_size, lr=lr, seed=seed)
    model.eval()
    val = dm.split("val")
    with torch.no_grad():
        p = torch.sigmoid(model(val.dense, val.sparse))
    return float(normalized_entropy(p, val.label))


def tau_with_interval(proxy, truth, rng, n_boot=200):
    proxy, truth = np.asarray(proxy), np.asarray(truth)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(truth), len(truth))
        if len(set(i)) > 2:
            boots.append(kendall_tau(proxy[i], truth[i]))
    return kendall_tau(proxy, truth), *np.nanquantile(boots, [0.25, 0.75])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="frappe")
    ap.add_argument("--space", default="rankitect")
    ap.add_argument("--archs", type=int, default=24)
    ap.add_argument("--budgets", type=int, nargs="+", default=[5000, 10000, 20000, 50000, 100000])
    ap.add_argument("--truth-examples", type=int, default=400000)
    ap.add_argument("--pretrain-examples", type=int, default=200000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/sampling_proxy"))
    args = ap.parse_args()
    dm, space = setup(args.data, args.space)
    archs = propose_random(space, args.archs, set(), torch.Generator().manual_seed(args.seed))
    kw = {"batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    start = time.perf_counter()
    truth = [truth_ne(space, dm, a, args.truth_examples, **kw) for a in archs]
    print(
        f"ground truth: {len(archs)} archs x {args.truth_examples} examples "
        f"({time.perf_counter() - start:.0f}s)"
    )
    proxies = {
        "early-stop": EarlyStopProxy(space, dm, **kw),
        "weight-sharing": WeightSharingProxy(
            space,
            dm,
            supernet_path=str(args.out / "supernet.pt"),
            pretrain_examples=args.pretrain_examples,
            **kw,
        ),
    }
    t0 = time.perf_counter()
    proxies["weight-sharing"].prepare()
    print(f"supernet pre-training: {time.perf_counter() - t0:.0f}s")
    rng = np.random.default_rng(args.seed)
    rows, scores = [], {}
    print(f"{'proxy':<15}{'budget':>9}{'tau':>8}{'q25':>8}{'q75':>8}{'s/arch':>8}")
    for name, proxy in proxies.items():
        for b in args.budgets:
            t0 = time.perf_counter()
            ne = [proxy.evaluate(a, b)["ne"] for a in archs]
            per_arch = (time.perf_counter() - t0) / len(archs)
            tau, q25, q75 = tau_with_interval(ne, truth, rng)
            rows.append(
                {
                    "proxy": name,
                    "budget": b,
                    "tau": tau,
                    "q25": q25,
                    "q75": q75,
                    "seconds_per_arch": per_arch,
                }
            )
            scores[f"{name}@{b}"] = ne
            print(f"{name:<15}{b:>9}{tau:>8.3f}{q25:>8.3f}{q75:>8.3f}{per_arch:>8.2f}")
    save(
        args.out,
        "proxy_quality",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows,
            "truth": truth,
            "scores": scores,
            "archs": [a.to_dict() for a in archs],
        },
    )

    def draw(ax):
        for name in proxies:
            r = [x for x in rows if x["proxy"] == name]
            b = [x["budget"] for x in r]
            ax.errorbar(
                b,
                [x["tau"] for x in r],
                capsize=3,
                marker="o",
                label=name,
                yerr=[[x["tau"] - x["q25"] for x in r], [x["q75"] - x["tau"] for x in r]],
            )
        ax.set_xscale("log")
        ax.set_xlabel("proxy budget (training examples)")
        ax.set_ylabel("Kendall tau vs ground truth")

    plot(args.out / "proxy_quality.png", draw)
    print(f"wrote {args.out}/proxy_quality.json and .png")


if __name__ == "__main__":
    main()
