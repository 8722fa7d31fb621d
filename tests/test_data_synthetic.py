"""The synthetic generator: determinism, the Bayes NE, and planted effects that a model with
embedding interactions captures and a logistic regression cannot."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from rankitect.data import CTRDataModule, SyntheticCTR, normalized_entropy


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # intra-op threads only add contention on a small shared machine for these tiny models
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_same_seed_same_data_other_seed_other_data():
    kw = {"n_train": 2000, "n_val": 500, "n_test": 500}
    a, b = SyntheticCTR(**kw, seed=3).load(), SyntheticCTR(**kw, seed=3).load()
    c = SyntheticCTR(**kw, seed=4).load()
    for s in ("train", "val", "test"):
        for attr in ("dense", "sparse", "label", "prob"):
            assert torch.equal(getattr(a.splits[s], attr), getattr(b.splits[s], attr))
        assert not torch.equal(a.splits[s].sparse, c.splits[s].sparse)
    # the size of one split changes neither the model nor the other splits
    small = SyntheticCTR(n_train=2000, n_val=10, n_test=10, seed=3).load().splits["train"]
    assert torch.equal(small.prob, a.splits["train"].prob)


def test_shapes_ranges_and_target_ctr():
    gen = SyntheticCTR(n_train=20000, n_val=1000, n_test=1000, ctr=0.3, seed=1)
    data = gen.load()
    train = data.splits["train"]
    assert data.spec.n_dense == 4 and data.spec.n_sparse == 8
    assert train.dense.shape == (20000, 4) and train.sparse.shape == (20000, 8)
    cards = torch.tensor(data.spec.sparse_cardinalities)
    assert (train.sparse >= 0).all() and (train.sparse < cards).all()
    assert ((train.prob > 0) & (train.prob < 1)).all()
    # mean probability matches the requested CTR; labels are draws from the probabilities
    assert train.prob.mean().item() == pytest.approx(0.3, abs=0.01)
    assert train.label.mean().item() == pytest.approx(train.prob.mean().item(), abs=0.015)
    assert gen.planted_interactions == (("C1", "C2"), ("C3", "C4"))
    assert gen.planted_gates == (("I1", "C5"),)


def test_bayes_ne_through_the_datamodule():
    gen = SyntheticCTR(n_train=5000, n_val=5000, n_test=20000, seed=0)
    dm = CTRDataModule(gen, batch_size=256)
    dm.setup("fit")
    test = dm.split("test")
    p, y = test.prob.numpy(), test.label.numpy().astype(np.float64)
    logloss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    ctr = y.mean()
    expected = logloss / -(ctr * np.log(ctr) + (1 - ctr) * np.log(1 - ctr))
    assert dm.bayes_ne("test") == pytest.approx(expected, rel=1e-9)
    assert torch.equal(dm.true_probabilities("test"), test.prob)
    assert 0.3 < dm.bayes_ne("test") < 0.8  # informative but not trivial
    # a constant prediction at the base rate has NE 1 by definition
    assert normalized_entropy(np.full_like(y, ctr), y) == pytest.approx(1.0)


def test_invalid_planted_effects():
    with pytest.raises(ValueError, match="two different sparse fields"):
        SyntheticCTR(interactions=[["C1", "C99"]])
    with pytest.raises(ValueError, match="two different sparse fields"):
        SyntheticCTR(interactions=[["C1", "C1"]])
    with pytest.raises(ValueError, match="dense feature"):
        SyntheticCTR(gates=[["C1", "C2"]])
    with pytest.raises(ValueError, match="duplicate"):
        SyntheticCTR(interactions=[["C1", "C2"], ["C1", "C2"]])


class _Logistic(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.w = nn.ModuleList(nn.Embedding(c, 1) for c in spec.sparse_cardinalities)
        for e in self.w:
            nn.init.zeros_(e.weight)
        self.dense = nn.Linear(spec.n_dense, 1)

    def forward(self, dense, sparse):
        first_order = sum(e(sparse[:, j]) for j, e in enumerate(self.w))
        return (self.dense(dense) + first_order).squeeze(1)


class _TinyDLRM(nn.Module):
    """Embeddings (plus a projection of the dense features), all pairwise dot products, MLP."""

    def __init__(self, spec, dim=8):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(c, dim) for c in spec.sparse_cardinalities)
        for e in self.emb:
            nn.init.normal_(e.weight, std=0.1)
        self.bottom = nn.Linear(spec.n_dense, dim)
        self.pairs = torch.triu_indices(spec.n_sparse + 1, spec.n_sparse + 1, 1)
        self.top = nn.Sequential(
            nn.Linear(dim + self.pairs.shape[1], 64), nn.ReLU(), nn.Linear(64, 1)
        )

    def forward(self, dense, sparse):
        z = torch.stack([self.bottom(dense)] + [e(sparse[:, j]) for j, e in enumerate(self.emb)], 1)
        dots = (z @ z.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        return self.top(torch.cat([z[:, 0], dots], 1)).squeeze(1)


def _fit(model, dm, epochs=2):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for dense, sparse, label in dm.train_dataloader():
            loss = nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), label)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def _predict(model, split):
    with torch.no_grad():
        return torch.sigmoid(model(split.dense, split.sparse)).numpy()


@pytest.fixture(scope="module")
def trained():
    """Default-sized data (what the synthetic.yaml config gives) and two trained models."""
    torch.manual_seed(0)
    dm = CTRDataModule(SyntheticCTR(seed=0), batch_size=1024, seed=0)
    dm.setup("fit")
    lr = _fit(_Logistic(dm.feature_spec), dm)
    dlrm = _fit(_TinyDLRM(dm.feature_spec), dm)
    return dm, lr, dlrm


def test_interactions_separate_logistic_regression_from_an_interaction_model(trained):
    dm, lr, dlrm = trained
    test = dm.split("test")
    bayes = dm.bayes_ne("test")
    ne_lr = normalized_entropy(_predict(lr, test), test.label)
    ne_dlrm = normalized_entropy(_predict(dlrm, test), test.label)
    assert ne_dlrm - bayes < 0.06, (bayes, ne_dlrm)  # close to the optimum
    assert ne_lr - bayes > 0.2, (bayes, ne_lr)  # first order alone stays far away
    assert ne_lr - ne_dlrm > 0.15


def _pair_statistic(residual, keys):
    """Mean over rows of (sum of residuals in the row's cell)^2 / rows: about the residual
    variance when cells carry no signal, much more when the cell means are structured."""
    sums = pd.Series(residual).groupby(keys).sum()
    return float((sums**2).sum() / len(residual))


def test_planted_pairs_are_where_logistic_regression_fails(trained):
    """The named pairs, and only those, leave structure in the LR's residuals."""
    dm, lr, _ = trained
    train = dm.split("train")
    residual = train.label.numpy() - _predict(lr, train)
    sparse = train.sparse.numpy()
    names = dm.feature_spec.sparse_names
    stats = {}
    for a, b in itertools.combinations(range(len(names)), 2):
        cell = sparse[:, a] * 1000 + sparse[:, b]
        stats[(names[a], names[b])] = _pair_statistic(residual, cell)
    planted = set(dm.source.planted_interactions)
    assert planted and planted <= set(stats)
    weakest_planted = min(stats[p] for p in planted)
    strongest_other = max(v for k, v in stats.items() if k not in planted)
    assert weakest_planted > 3 * strongest_other, stats

    # the gate: the residual's slope on I1 varies with C5's id, not with other fields' ids
    x1 = train.dense.numpy()[:, 0]
    gate_stats = {f: _pair_statistic(residual * x1, sparse[:, j]) for j, f in enumerate(names)}
    ((dense_name, gated),) = dm.source.planted_gates
    assert dense_name == "I1"
    others = max(v for f, v in gate_stats.items() if f != gated)
    assert gate_stats[gated] > 3 * others, gate_stats
