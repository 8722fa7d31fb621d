"""`OneShotRL`: one-shot NAS with an in-place RL agent (paper §3.2.2), built from
``conf/method/oneshot_rl.yaml``."""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rankitect.callbacks.rl import RLSearchCallback
from rankitect.lit.supernet_module import BaselineConfig, SupernetModule, plain
from rankitect.search.method import SearchMethod, callback_config
from rankitect.search.outcome import SearchOutcome
from rankitect.search.policy import CategoricalPolicy
from rankitect.space.space import SearchSpace


class OneShotRL(SearchMethod):
    """A `SupernetModule` (supernet + in-place baseline) and an `RLSearchCallback`.

    The keyword arguments are the method's config keys: ``baseline``, ``lr`` and
    ``weight_decay`` go to the module, ``max_nonfinite_in_a_row`` to both (the module's limit
    on non-finite losses, the callback's on non-finite rewards), every other one to the
    callback (see their docs). ``callback`` builds the callback from the space and those keys:
    `RLSearchCallback` by default, or a ``_partial_`` config with ``_target_``
    (``conf/callbacks/method/rl_policy.yaml``). ``module`` builds the LightningModule from the
    space and the module's keys: `SupernetModule` by default, or a ``_partial_`` config.
    The found architecture is the policy's most likely one.
    """

    name = "oneshot_rl"

    def __init__(
        self,
        *,
        baseline: BaselineConfig = "seed",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        max_nonfinite_in_a_row: int = 10,
        callback: Any = None,
        module: Any = None,
        **search: Any,
    ) -> None:
        self.callback = callback_config(callback, RLSearchCallback)
        self.module_class = callback_config(module, SupernetModule)
        known = set(inspect.signature(self.callback).parameters) - {"space"}
        unknown = sorted(set(search) - known)
        if unknown:
            raise ValueError(
                f"unknown oneshot_rl config key(s) {unknown}; known: "
                f"{sorted(known | {'baseline', 'lr', 'weight_decay', 'callback', 'module'})}"
            )
        self.module_options = {
            "baseline": plain(baseline),
            "lr": lr,
            "weight_decay": weight_decay,
            "max_nonfinite_in_a_row": max_nonfinite_in_a_row,
        }
        self.search_options = {k: plain(v) for k, v in search.items()}
        self.search_options["max_nonfinite_in_a_row"] = max_nonfinite_in_a_row

    def build(self, space: SearchSpace) -> tuple[L.LightningModule, list[Callback]]:
        callback = self.callback(space, **self.search_options)
        return self.module_class(space, **self.module_options), [callback]

    def outcome(self, module: L.LightningModule, callbacks: list[Callback]) -> SearchOutcome:
        record = module.search_record
        if record is None:
            raise RuntimeError("the one-shot RL search did not run: no search record on the module")
        policy = CategoricalPolicy(module.space).double()
        with torch.no_grad():
            policy.logits.copy_(record["logits"])
        return SearchOutcome(
            arch=policy.most_likely(),
            probs=[p.detach() for p in policy.probs()],
            curves=record["curves"],
            extra={
                "target_flops": record["target_flops"],
                "policy_updates": record["updates"],
                # absent from the record of a search checkpointed by an older version
                "warmup_steps": record.get("warmup_steps"),
                # NE on the shared supernet weights: a proxy, not a trained-from-scratch NE
                "supernet_val": record["val"],
            },
        )
