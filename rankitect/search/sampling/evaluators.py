"""Low-cost NE proxies (paper §3.2.1): the early-stop proxy and the weight-sharing proxy, and
SiGeo's sub-one-shot score (`SiGeoProxy`).

Both score an architecture by the window NE over the last ``window_fraction`` (25%) of the
examples it was trained on: each batch's predictions are taken before that batch's optimiser
step (progressive validation), so the window NE is an out-of-sample estimate at no extra cost.
A *budget* is a number of training examples; every architecture sees the same examples in the
same order (a permutation of the train split fixed by ``seed``, wrapping around when the budget
exceeds the split), so differences between scores come from the architectures alone.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankitect.data.datamodule import CTRDataModule
from rankitect.data.source import CTRSplit
from rankitect.metrics import WindowNormalizedEntropy
from rankitect.space.arch import Arch
from rankitect.space.factory import build_supernet
from rankitect.space.space import SearchSpace
from rankitect.space.subnet import materialize
from rankitect.space.supernet import Supernet

log = logging.getLogger(__name__)


def batch_indices(n: int, budget: int, batch_size: int, seed: int, start: int = 0):
    """Index batches covering examples ``start .. start + budget`` of a seeded, endlessly
    repeated permutation of ``range(n)`` (a fresh permutation per pass)."""
    if batch_size < 1:
        raise ValueError(f"evaluator batch_size must be >= 1, got {batch_size}")
    pos, end = start, start + budget
    perms: dict[int, torch.Tensor] = {}
    while pos < end:
        epoch, offset = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        take = min(batch_size, end - pos, n - offset)
        yield perms[epoch][offset : offset + take]
        pos += take


def train_window_ne(
    model: nn.Module,
    split: CTRSplit,
    budget: int,
    *,
    batch_size: int,
    lr: float,
    seed: int,
    window_fraction: float = 0.25,
    start: int = 0,
) -> float:
    """Train ``model`` with Adam on ``budget`` examples of ``split``; the window NE of its
    pre-step predictions over the last ``window_fraction`` of them."""
    if budget < 1:
        raise ValueError(f"a proxy budget must be >= 1 example, got {budget}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    window = WindowNormalizedEntropy(fraction=window_fraction)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for idx in batch_indices(len(split), budget, batch_size, seed, start):
        y = split.label[idx]
        logits = model(split.dense[idx], split.sparse[idx])
        window.update(torch.sigmoid(logits.detach()), y)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(window.compute())


class Evaluator(ABC):
    """Scores an architecture at a budget (training examples); lower ``ne`` is better.

    Built in every worker from the search's config with ``space`` and ``datamodule`` passed in;
    `prepare` runs once in the proposer before any worker starts (e.g. supernet pre-training).
    """

    def prepare(self) -> None:  # noqa: B027 - most evaluators need no shared preparation
        """One-off work shared by all workers, done by the proposer (idempotent)."""

    @abstractmethod
    def evaluate(self, arch: Arch, budget: int) -> dict[str, Any]:
        """Metrics of ``arch`` trained on ``budget`` examples: at least ``ne`` (float)."""


class _TrainingProxy(Evaluator):
    def __init__(
        self,
        space: SearchSpace,
        datamodule: CTRDataModule,
        *,
        batch_size: int = 512,
        lr: float = 1e-3,
        window_fraction: float = 0.25,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        if lr <= 0:
            raise ValueError(f"method.evaluator.lr must be > 0, got {lr}")
        if not 0 < window_fraction <= 1:
            raise ValueError(
                f"method.evaluator.window_fraction must be in (0, 1], got {window_fraction}"
            )
        self.space = space
        self.split = datamodule.split(split)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.window_fraction = float(window_fraction)
        self.seed = int(seed)

    def _train(self, model: nn.Module, budget: int, start: int = 0) -> float:
        return train_window_ne(
            model,
            self.split,
            budget,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            window_fraction=self.window_fraction,
            start=start,
        )

    def _metrics(self, arch: Arch, ne: float, started: float) -> dict[str, Any]:
        return {
            "ne": ne,
            "flops": int(self.space.flops(arch)),
            "params": int(self.space.params(arch)),
            "seconds": round(time.perf_counter() - started, 3),
        }


class EarlyStopProxy(_TrainingProxy):
    """Train the materialised subnet from scratch on ``budget`` examples (no supernet)."""

    def evaluate(self, arch: Arch, budget: int) -> dict[str, Any]:
        started = time.perf_counter()
        torch.manual_seed(self.seed)  # the same initial draw for every architecture
        model = materialize(self.space, arch)
        return self._metrics(arch, self._train(model, budget), started)


def save_atomic(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file beside ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class WeightSharingProxy(_TrainingProxy):
    """Fine-tune the subnet from the pre-trained supernet's weights on ``budget`` examples.

    Supernet pre-training (`prepare`, once): the first ``warmup_fraction`` (10%) of
    ``pretrain_examples`` with every mask on; afterwards each mini-batch trains, with
    probability ``subnet_prob`` (0.75), a random subnet drawn from the space's prior and
    otherwise the whole supernet. Fine-tuning starts on the examples after the pre-training
    ones and copies weights out of the supernet, which is never written back.
    """

    def __init__(
        self,
        space: SearchSpace,
        datamodule: CTRDataModule,
        *,
        supernet_path: str,
        pretrain_examples: int,
        warmup_fraction: float = 0.1,
        subnet_prob: float = 0.75,
        **kwargs: Any,
    ) -> None:
        super().__init__(space, datamodule, **kwargs)
        if not supernet_path:
            raise ValueError("method.evaluator.supernet_path must name the supernet checkpoint")
        if pretrain_examples < 1:
            raise ValueError(
                f"method.evaluator.pretrain_examples must be >= 1, got {pretrain_examples}"
            )
        if not 0 <= warmup_fraction <= 1 or not 0 <= subnet_prob <= 1:
            raise ValueError("method.evaluator.warmup_fraction and subnet_prob must be in [0, 1]")
        self.supernet_path = Path(supernet_path)
        self.pretrain_examples = int(pretrain_examples)
        self.warmup_fraction = float(warmup_fraction)
        self.subnet_prob = float(subnet_prob)
        self._supernet: Supernet | None = None

    def pretrain(self) -> Supernet:
        torch.manual_seed(self.seed)
        supernet = build_supernet(self.space)
        opt = torch.optim.Adam(supernet.parameters(), lr=self.lr)
        loss_fn = nn.BCEWithLogitsLoss()
        gen = torch.Generator().manual_seed(self.seed + 1)
        warmup = int(self.warmup_fraction * self.pretrain_examples)
        seen = 0
        supernet.train()
        batches = batch_indices(len(self.split), self.pretrain_examples, self.batch_size, self.seed)
        for idx in batches:
            sub = seen >= warmup and torch.rand((), generator=gen).item() < self.subnet_prob
            arch = self.space.sample(gen) if sub else None
            logits = supernet(self.split.dense[idx], self.split.sparse[idx], arch=arch)
            loss = loss_fn(logits, self.split.label[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        return supernet

    def prepare(self) -> None:
        if self.supernet_path.is_file():
            log.info("reusing the pre-trained supernet %s", self.supernet_path)
            return
        started = time.perf_counter()
        supernet = self.pretrain()
        save_atomic(supernet.state_dict(), self.supernet_path)
        log.info(
            "pre-trained the supernet on %d examples in %.1fs -> %s",
            self.pretrain_examples,
            time.perf_counter() - started,
            self.supernet_path,
        )

    @property
    def supernet(self) -> Supernet:
        if self._supernet is None:
            if not self.supernet_path.is_file():
                raise FileNotFoundError(
                    f"no pre-trained supernet at {self.supernet_path} "
                    "(method.evaluator.supernet_path); the proposer's prepare() writes it"
                )
            supernet = build_supernet(self.space)
            supernet.load_state_dict(torch.load(self.supernet_path, weights_only=True))
            self._supernet = supernet.eval()
        return self._supernet

    def evaluate(self, arch: Arch, budget: int) -> dict[str, Any]:
        started = time.perf_counter()
        # materialize copies the weights (load_state_dict), so fine-tuning cannot reach them.
        model = materialize(self.space, arch, self.supernet)
        ne = self._train(model, budget, start=self.pretrain_examples)
        return self._metrics(arch, ne, started)


def sigeo_terms(model: nn.Module, split: CTRSplit, batches: list[torch.Tensor]) -> dict[str, float]:
    """SiGeo's three terms at ``model``'s current weights theta, from one gradient per batch:

    - ``zico``: sum over modules of log(sum over their parameters of mean_b|g_b| / std_b(g_b)),
      parameters whose gradient does not vary across the batches left out;
    - ``fisher_rao``: log |sum_b g_b . theta|;
    - ``loss``: the mean training loss of the batches.
    """
    if len(batches) < 2:
        raise ValueError("SiGeo needs >= 2 mini-batches (a gradient spread across them)")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    total_sq = {n: torch.zeros_like(p) for n, p in params.items()}
    total_abs = {n: torch.zeros_like(p) for n, p in params.items()}
    inner, losses = 0.0, []
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for idx in batches:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(split.dense[idx], split.sparse[idx]), split.label[idx])
        loss.backward()
        losses.append(float(loss.detach()))
        for n, p in params.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            total[n] += g
            total_sq[n] += g * g
            total_abs[n] += g.abs()
            inner += float((g * p.detach()).sum())
    model.zero_grad(set_to_none=True)
    b = len(batches)
    per_module: dict[str, float] = {}
    for n in params:
        mean = total[n] / b
        std = (total_sq[n] / b - mean * mean).clamp_min(0).sqrt()
        ok = std > 0
        if ok.any():
            ratio = float((total_abs[n][ok] / b / std[ok]).sum())
            module = n.rsplit(".", 1)[0] if "." in n else n
            per_module[module] = per_module.get(module, 0.0) + ratio
    zico = sum(math.log(v) for v in per_module.values() if v > 0)
    fisher_rao = math.log(max(abs(inner), 1e-30))  # finite even for an all-zero gradient
    return {"zico": zico, "fisher_rao": fisher_rao, "loss": sum(losses) / b}


class SiGeoProxy(WeightSharingProxy):
    """SiGeo (../shared/papers/related_abstracts.txt), a sub-one-shot proxy: the supernet is
    warmed up once on ``pretrain_examples`` (a small fraction of the training data, as the
    weight-sharing proxy does, `prepare`), then each subnet is scored with its inherited
    weights and no training of its own, from ``ceil(budget / batch_size)`` mini-batches
    (about 4; at least 2) of the examples after the warm-up ones:

        score = zico_weight * zico + fisher_rao_weight * fisher_rao - loss_weight * loss

    (`sigeo_terms`), higher is better. The search minimises ``ne``, so ``ne`` is the negated
    score here (not an NE); the metrics also hold ``sigeo`` and each term.
    """

    def __init__(
        self,
        space: SearchSpace,
        datamodule: CTRDataModule,
        *,
        zico_weight: float = 1.0,
        fisher_rao_weight: float = 1.0,
        loss_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(space, datamodule, **kwargs)
        self.weights = (float(zico_weight), float(fisher_rao_weight), float(loss_weight))

    def evaluate(self, arch: Arch, budget: int) -> dict[str, Any]:
        started = time.perf_counter()
        if budget < 1:
            raise ValueError(f"a proxy budget must be >= 1 example, got {budget}")
        torch.manual_seed(self.seed)  # the same dropout draws for every architecture
        model = materialize(self.space, arch, self.supernet)
        n = max(2, math.ceil(budget / self.batch_size))
        batches = list(
            batch_indices(
                len(self.split), n * self.batch_size, self.batch_size, self.seed,
                start=self.pretrain_examples,
            )
        )  # fmt: skip
        terms = sigeo_terms(model, self.split, batches)
        wz, wf, wl = self.weights
        score = wz * terms["zico"] + wf * terms["fisher_rao"] - wl * terms["loss"]
        return {
            **self._metrics(arch, -score, started),
            "sigeo": score,
            **terms,
            "examples": sum(len(i) for i in batches),
        }
