"""Predictor quality on held-out architectures: Kendall tau and precision@k of the neural
predictor, pairwise ranking loss vs mean squared error, an ensemble vs a single MLP.

    python benchmarks/sampling_predictor_quality.py \
        --scores outputs/bench/sampling_rounds/rounds.json --train 80 --repeats 10

``--scores``: a JSON with a ``scores`` list of ``{"arch", "ne"}`` (what
benchmarks/sampling_rounds.py writes; only its random arm is used, an unbiased sample of the
space). Each repeat splits the architectures at random into ``--train`` and the rest held out;
precision@k is the share of the held-out true top ``k`` (10%) among the predicted top ``k``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sampling_common import save, setup  # noqa: E402

from rankitect.metrics import kendall_tau  # noqa: E402
from rankitect.search.sampling import NeuralPredictor  # noqa: E402
from rankitect.space.arch import Arch  # noqa: E402


def precision_at_k(pred, truth, k: int) -> float:
    top_pred = set(np.argsort(pred)[:k].tolist())
    top_true = set(np.argsort(truth)[:k].tolist())
    return len(top_pred & top_true) / k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scores", type=Path, required=True)
    ap.add_argument("--data", default="frappe")
    ap.add_argument("--space", default="rankitect")
    ap.add_argument("--train", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/sampling_predictor"))
    args = ap.parse_args()
    _, space = setup(args.data, args.space)
    rows = [s for s in json.loads(args.scores.read_text())["scores"] if s["arm"] == "random"]
    archs = [space.validate(Arch.from_dict(s["arch"])) for s in rows]
    ne = np.array([s["ne"] for s in rows])
    if len(archs) <= args.train + 4:
        raise SystemExit(f"{len(archs)} scored architectures: need more than --train + 4")
    k = max(2, (len(archs) - args.train) // 10)
    variants = {
        f"{loss} x{m}": (loss, m) for loss in ("pairwise", "mse") for m in (1, args.ensemble)
    }
    results = {v: {"tau": [], "p@k": []} for v in variants}
    for rep in range(args.repeats):
        perm = np.random.default_rng(rep).permutation(len(archs))
        tr, te = perm[: args.train], perm[args.train :]
        for name, (loss, m) in variants.items():
            predictor = NeuralPredictor(space, ensemble=m, loss=loss, seed=rep)
            predictor.fit([archs[i] for i in tr], ne[tr].tolist())
            pred, _ = predictor.predict([archs[i] for i in te])
            pred = pred.numpy()
            results[name]["tau"].append(kendall_tau(torch.tensor(pred), torch.tensor(ne[te])))
            results[name]["p@k"].append(precision_at_k(pred, ne[te], k))
    print(
        f"{len(archs)} architectures, {args.train} to train, {len(archs) - args.train} held "
        f"out, k={k}, {args.repeats} repeats"
    )
    print(f"{'predictor':<14}{'tau mean':>10}{'tau std':>9}{'p@k mean':>10}{'p@k std':>9}")
    summary = {}
    for name, r in results.items():
        summary[name] = {m: [float(np.mean(v)), float(np.std(v))] for m, v in r.items()}
        print(
            f"{name:<14}{np.mean(r['tau']):>10.3f}{np.std(r['tau']):>9.3f}"
            f"{np.mean(r['p@k']):>10.3f}{np.std(r['p@k']):>9.3f}"
        )
    save(
        args.out,
        "predictor_quality",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "k": k,
            "summary": summary,
            "raw": results,
        },
    )


if __name__ == "__main__":
    main()
