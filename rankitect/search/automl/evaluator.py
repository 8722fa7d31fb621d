"""`CurveEvaluator`: train one joint configuration, recording its validation-NE learning curve.

A trial trains ``materialize(space at its embedding_dim, arch, dropout)`` with Adam at its
learning rate (weight decay on the non-embedding parameters, ``emb_l2 / 2 * sum ||E||^2`` on the
embedding tables, as `CTRModule` does) and its batch size, on ``budget`` examples of a fixed,
seeded order of the train split (`batch_indices`, shared with the sampling proxies). Every
``eval_every`` examples (and at the end) it measures NE on the first ``val_examples`` of the
validation split: the curve the low-fidelity fit extrapolates to ``full_examples``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from rankitect.lit.ctr_module import embedding_weights
from rankitect.metrics import normalized_entropy
from rankitect.search.automl.curves import fit_power_law
from rankitect.search.automl.space import JointConfig, JointSpace
from rankitect.search.sampling.evaluators import Evaluator, batch_indices
from rankitect.space.subnet import materialize


class CurveEvaluator(Evaluator):
    """Scores a `JointConfig` at a budget (training examples); see the module docstring.

    Metrics: ``ne`` (validation NE at the end), ``ne_extrap`` (the power-law extrapolation of
    the curve to ``full_examples``; ``ne`` itself when the budget reaches it), ``fit_fallback``,
    ``curve`` ([examples, NE] pairs), ``flops``, ``params``, ``seconds``, ``examples_per_s``.
    """

    def __init__(
        self,
        space: JointSpace,
        datamodule: Any,
        *,
        full_examples: int,
        eval_every: int,
        val_examples: int = 20000,
        eval_batch_size: int = 8192,
        seed: int = 0,
    ) -> None:
        if full_examples < 1 or eval_every < 1 or val_examples < 1:
            raise ValueError(
                "method.low_fidelity.full_examples, eval_every and val_examples must be >= 1"
            )
        self.space = space
        self.train = datamodule.split("train")
        val = datamodule.split("val")
        keep = torch.arange(min(int(val_examples), len(val)))
        self.val = (val.dense[keep], val.sparse[keep], val.label[keep])
        self.full_examples = int(full_examples)
        self.eval_every = int(eval_every)
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)

    @torch.no_grad()
    def validation_ne(self, model: nn.Module) -> float:
        model.eval()
        dense, sparse, label = self.val
        preds = torch.cat(
            [
                torch.sigmoid(
                    model(dense[i : i + self.eval_batch_size], sparse[i : i + self.eval_batch_size])
                )
                for i in range(0, len(label), self.eval_batch_size)
            ]
        )
        model.train()
        return float(normalized_entropy(preds, label))

    def evaluate(self, config: JointConfig, budget: int) -> dict[str, Any]:
        if budget < 1:
            raise ValueError(f"a trial budget must be >= 1 example, got {budget}")
        started = time.perf_counter()
        hp = self.space.resolve(config)
        arch_space = self.space.arch_space(config)
        torch.manual_seed(self.seed)  # the same initial draw for every configuration
        model = materialize(arch_space, config.arch, dropout=float(hp["dropout"]))
        emb = embedding_weights(model)
        emb_ids = {id(w) for w in emb}
        rest = [p for p in model.parameters() if id(p) not in emb_ids]
        groups = [
            g
            for g in (
                {"params": emb, "weight_decay": 0.0},
                {"params": rest, "weight_decay": float(hp["weight_decay"])},
            )
            if g["params"]
        ]
        opt = torch.optim.Adam(groups, lr=float(hp["lr"]))
        emb_l2 = float(hp["emb_l2"])
        loss_fn = nn.BCEWithLogitsLoss()
        model.train()
        curve: list[list[float]] = []
        seen, next_eval, train_s = 0, self.eval_every, 0.0
        batches = batch_indices(len(self.train), budget, int(hp["batch_size"]), self.seed)
        for idx in batches:
            step_start = time.perf_counter()
            logits = model(self.train.dense[idx], self.train.sparse[idx])
            loss = loss_fn(logits, self.train.label[idx])
            if emb_l2:
                loss = loss + emb_l2 / 2 * sum(w.pow(2).sum() for w in emb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            train_s += time.perf_counter() - step_start
            seen += len(idx)
            if seen >= next_eval or seen == budget:
                curve.append([seen, self.validation_ne(model)])
                while next_eval <= seen:
                    next_eval += self.eval_every
        ne = curve[-1][1]
        if budget >= self.full_examples:
            ne_extrap, fallback = ne, False
        else:
            fit = fit_power_law([(n, v) for n, v in curve], self.full_examples)
            ne_extrap, fallback = fit.value, fit.fallback
        return {
            "ne": ne,
            "ne_extrap": ne_extrap,
            "fit_fallback": fallback,
            "curve": curve,
            "flops": int(arch_space.flops(config.arch)),
            "params": int(arch_space.params(config.arch)),
            "seconds": round(time.perf_counter() - started, 3),
            "examples_per_s": round(seen / max(train_s, 1e-9), 1),
        }
