"""NE, window NE, log loss, AUC and Kendall tau against hand-computed values."""

from __future__ import annotations

import itertools
import math
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics import MetricCollection

from rankitect.metrics import (
    LogLoss,
    NormalizedEntropy,
    WindowNormalizedEntropy,
    kendall_tau,
    make_auroc,
    normalized_entropy,
)


def f64(values: list[float]) -> torch.Tensor:
    # float64 so that 0.3 is the same number here and in the math.log reference
    return torch.tensor(values, dtype=torch.float64)


def logloss_by_hand(preds: list[float], labels: list[float]) -> float:
    pairs = zip(preds, labels, strict=True)
    terms = [-(y * math.log(p) + (1 - y) * math.log(1 - p)) for p, y in pairs]
    return sum(terms) / len(terms)


def ne_by_hand(preds: list[float], labels: list[float]) -> float:
    rate = sum(labels) / len(labels)
    entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    return logloss_by_hand(preds, labels) / entropy


def random_batches(seed: int, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        preds = torch.rand(n, generator=g).clamp(0.01, 0.99)
        labels = (torch.rand(n, generator=g) < preds).float()
        out.append((preds, labels))
    return out


def test_constant_prediction_at_base_rate_gives_ne_one():
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # base rate 0.3
    metric = NormalizedEntropy()
    metric.update(torch.full((10,), 0.3), labels)
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-6)


def test_ne_and_logloss_match_hand_computation_across_updates():
    preds = [0.9, 0.2, 0.6, 0.4, 0.7]
    labels = [1.0, 0.0, 1.0, 1.0, 0.0]
    ne, ll = NormalizedEntropy(), LogLoss()
    for metric in (ne, ll):
        metric.update(f64(preds[:2]), f64(labels[:2]))
        metric.update(f64(preds[2:]), f64(labels[2:]))
    # by hand: p = 0.6, H = -(0.6 ln 0.6 + 0.4 ln 0.4)
    expected_ll = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.4) + math.log(0.3))
    expected_ll /= 5
    entropy = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    assert ll.compute().item() == pytest.approx(expected_ll, rel=1e-9)
    assert ne.compute().item() == pytest.approx(expected_ll / entropy, rel=1e-9)
    functional = normalized_entropy(f64(preds), f64(labels))
    assert functional.item() == pytest.approx(expected_ll / entropy, rel=1e-9)


def test_better_predictions_give_lower_ne():
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    sharp = normalized_entropy(torch.tensor([0.9, 0.1, 0.8, 0.2]), labels)
    vague = normalized_entropy(torch.tensor([0.6, 0.4, 0.55, 0.45]), labels)
    assert sharp < vague < 1.0


def test_metric_collection_shares_states_and_accepts_2d_inputs():
    batches = random_batches(0, [7, 5])
    coll = MetricCollection({"ne": NormalizedEntropy(), "logloss": LogLoss()})
    for preds, labels in batches:
        coll.update(preds.unsqueeze(1), labels.unsqueeze(1))
    out = coll.compute()
    preds = torch.cat([b[0] for b in batches]).tolist()
    labels = torch.cat([b[1] for b in batches]).tolist()
    assert out["ne"].item() == pytest.approx(ne_by_hand(preds, labels), rel=1e-9)
    assert out["logloss"].item() == pytest.approx(logloss_by_hand(preds, labels), rel=1e-9)


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_single_class_labels_give_nan_not_a_crash(label):
    metric = NormalizedEntropy()
    metric.update(torch.tensor([0.2, 0.7]), torch.full((2,), label))
    assert math.isnan(metric.compute().item())


def test_no_examples_give_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        assert math.isnan(NormalizedEntropy().compute().item())
        assert math.isnan(WindowNormalizedEntropy().compute().item())


def test_probabilities_are_clamped_by_eps():
    metric = LogLoss(eps=1e-3)
    metric.update(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]))  # both maximally wrong
    assert metric.compute().item() == pytest.approx(-math.log(1e-3), rel=1e-9)


@pytest.mark.parametrize(
    ("preds", "target", "match"),
    [
        (torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0]), "probabilities in"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0.0, 2.0]), "labels in"),
        (torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0, 1.0]), "same shape"),
        (torch.tensor([0, 1]), torch.tensor([0.0, 1.0]), "floating-point"),
    ],
)
def test_invalid_inputs_raise(preds, target, match):
    with pytest.raises(ValueError, match=match):
        NormalizedEntropy().update(preds, target)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (NormalizedEntropy, {"eps": 0.0}),
        (WindowNormalizedEntropy, {"fraction": 0.0}),
        (WindowNormalizedEntropy, {"fraction": 1.5}),
    ],
)
def test_invalid_constructor_args_raise(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_window_ne_covers_only_the_trailing_quarter():
    # 8 equal batches: 6 well-predicted, then 2 badly predicted ones (the last 25%).
    good = ([0.9, 0.1, 0.8, 0.2], [1.0, 0.0, 1.0, 0.0])
    bad = ([0.3, 0.6, 0.4, 0.7], [1.0, 0.0, 1.0, 1.0])
    stream = [good] * 6 + [bad] * 2
    window, full = WindowNormalizedEntropy(fraction=0.25), NormalizedEntropy()
    for preds, labels in stream:
        window.update(f64(preds), f64(labels))
        full.update(f64(preds), f64(labels))
    expected = ne_by_hand(bad[0] * 2, bad[1] * 2)
    assert window.compute().item() == pytest.approx(expected, rel=1e-9)
    all_preds = [p for preds, _ in stream for p in preds]
    all_labels = [y for _, labels in stream for y in labels]
    assert full.compute().item() == pytest.approx(ne_by_hand(all_preds, all_labels), rel=1e-9)
    assert window.compute().item() > full.compute().item() + 0.5


def test_window_rounds_up_to_whole_updates():
    batches = random_batches(1, [10, 10, 10, 10])
    window = WindowNormalizedEntropy(fraction=0.3)  # 12 of 40 examples -> the last 2 updates
    for preds, labels in batches:
        window.update(preds, labels)
    preds = torch.cat([b[0] for b in batches[2:]]).tolist()
    labels = torch.cat([b[1] for b in batches[2:]]).tolist()
    assert window.compute().item() == pytest.approx(ne_by_hand(preds, labels), rel=1e-9)


def test_window_of_everything_equals_ne():
    batches = random_batches(2, [3, 8, 5])
    window, full = WindowNormalizedEntropy(fraction=1.0), NormalizedEntropy()
    for preds, labels in batches:
        window.update(preds, labels)
        full.update(preds, labels)
    assert window.compute().item() == pytest.approx(full.compute().item(), rel=1e-12)


def test_window_forward_returns_batch_ne_and_accumulates():
    batches = random_batches(3, [6, 6, 6, 6])
    window = WindowNormalizedEntropy(fraction=0.5)
    for preds, labels in batches:
        batch_value = window(preds, labels)
        assert batch_value.item() == pytest.approx(
            ne_by_hand(preds.tolist(), labels.tolist()), rel=1e-9
        )
    preds = torch.cat([b[0] for b in batches[2:]]).tolist()
    labels = torch.cat([b[1] for b in batches[2:]]).tolist()
    assert window.compute().item() == pytest.approx(ne_by_hand(preds, labels), rel=1e-9)


def test_window_stays_exact_over_many_updates():
    # 1200 single-example updates cross the state's 1024-row merge; the window is the last 300.
    g = torch.Generator().manual_seed(4)
    preds = torch.rand(1200, generator=g).clamp(0.05, 0.95)
    labels = (torch.rand(1200, generator=g) < 0.4).float()
    window = WindowNormalizedEntropy(fraction=0.25, validate_args=False)
    for i in range(1200):
        window.update(preds[i : i + 1], labels[i : i + 1])
    expected = ne_by_hand(preds[900:].tolist(), labels[900:].tolist())
    assert window.compute().item() == pytest.approx(expected, rel=1e-9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, per_rank: list, out: str) -> None:
    torch.set_num_threads(1)  # two ranks share the test machine's cores
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(per_rank)
    )
    try:
        metrics = {
            "ne": NormalizedEntropy(),
            "logloss": LogLoss(),
            "window": WindowNormalizedEntropy(fraction=0.25),
        }
        for preds, labels in per_rank[rank]:
            for metric in metrics.values():
                metric.update(preds, labels)
        torch.save({k: m.compute() for k, m in metrics.items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ddp_two_processes_match_single_process(tmp_path):
    # Uneven batch sizes, and rank 1 makes one update fewer than rank 0.
    rank0 = random_batches(5, [9, 9, 9, 9, 9, 9])
    rank1 = random_batches(6, [4, 4, 4, 4, 4])
    mp.spawn(_ddp_worker, args=(_free_port(), [rank0, rank1], str(tmp_path)), nprocs=2, join=True)
    # Single process: global step k holds both ranks' k-th batches.
    single = {"ne": NormalizedEntropy(), "logloss": LogLoss(), "window": WindowNormalizedEntropy()}
    for b0, b1 in itertools.zip_longest(rank0, rank1):
        step = [b for b in (b0, b1) if b is not None]
        preds, labels = torch.cat([b[0] for b in step]), torch.cat([b[1] for b in step])
        for metric in single.values():
            metric.update(preds, labels)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, metric in single.items():
            assert got[name].item() == pytest.approx(metric.compute().item(), rel=1e-12), name
    # 79 examples; the trailing 20 are steps 5 and 4 (9 + 13 = 22 examples).
    tail = [rank0[5], rank0[4], rank1[4]]
    expected = ne_by_hand(
        torch.cat([b[0] for b in tail]).tolist(), torch.cat([b[1] for b in tail]).tolist()
    )
    assert got["window"].item() == pytest.approx(expected, rel=1e-9)


def _auc_by_hand(preds: list[float], labels: list[float]) -> float:
    pos = [p for p, y in zip(preds, labels, strict=True) if y == 1]
    neg = [p for p, y in zip(preds, labels, strict=True) if y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_exact_and_binned():
    ((preds, labels),) = random_batches(7, [400])
    expected = _auc_by_hand(preds.tolist(), labels.tolist())
    exact, binned = make_auroc(), make_auroc(thresholds=1000)
    for metric in (exact, binned):
        metric.update(preds[:150], labels[:150].long())
        metric.update(preds[150:], labels[150:].long())
    assert exact.compute().item() == pytest.approx(expected, abs=1e-6)
    assert binned.compute().item() == pytest.approx(expected, abs=5e-3)
    with pytest.raises(ValueError):
        make_auroc(thresholds=1)


def test_kendall_tau_hand_values():
    # pairs of [1, 2, 3, 4] vs [1, 3, 2, 4]: 5 concordant, 1 discordant -> (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([3.0, 2.0, 1.0])) == -1.0
    assert math.isnan(kendall_tau([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        kendall_tau([1], [1])
