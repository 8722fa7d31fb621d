"""`DNAS`: the Gumbel-softmax differentiable search method of `rankitect-search`
(``method=dnas``, ``conf/method/dnas.yaml``; paper §3.2.3)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from rankitect.callbacks.flops_regularizer import FlopsRegularizer
from rankitect.callbacks.temperature import GumbelTemperature
from rankitect.lit.dnas_module import DNASModule
from rankitect.search.method import SearchMethod, callback_config, to_plain
from rankitect.search.outcome import SearchOutcome
from rankitect.space.space import SearchSpace


def _check_keys(prefix: str, options: Mapping[str, Any], cls: type, exclude=frozenset()) -> None:
    known = set(inspect.signature(cls).parameters) - set(exclude)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"method config: unknown key {prefix}{unknown[0]}; known: {sorted(known)}")


class DNAS(SearchMethod):
    """Builds a `DNASModule` with its `GumbelTemperature` and (given a target) `FlopsRegularizer`.

    Args:
        target_flops: ``c`` of Eq. 9 (per-example FLOPs); ``None`` takes the seed
            architecture's FLOPs.
        alpha: weight of the FLOPs regulariser (``lambda``); 0 searches on CE alone.
        cost: ``l1`` (``|F - c| / c``, Eq. 9), ``relu`` (``max(F - c, 0) / c``) or ``linear``
            (``F / c``, the cost-aware loss of DistDNAS).
        flops_estimator: ``sampled`` (Eq. 9, Monte-Carlo over the step's realisations) or
            ``expected`` (``|E[FLOPs] - c|``); see `FlopsRegularizer`.
        flops_max_realisations: realisations per step used by the ``sampled`` estimator.
        temperature: `GumbelTemperature` options (``schedule``, ``start``, ``end``,
            ``anneal_steps``, ``warmup_steps``, ``freeze_theta_during_warmup``), or the
            temperature callback itself, or its config with ``_target_``
            (``conf/callbacks/method/gumbel_temperature.yaml``): another schedule is a
            Callback with ``start``, ``warmup_steps`` and ``freeze_theta_during_warmup`` that
            sets ``pl_module.temperature`` (and ``theta_frozen``) before each step.
        regularizer: what builds the FLOPs regulariser from ``target_flops``, ``weight``
            (``alpha``), ``estimator``, ``kind`` (``cost``) and ``max_realisations``:
            `FlopsRegularizer` by default, or a ``_partial_`` config with ``_target_``
            (``conf/callbacks/method/flops_regularizer.yaml``).
        module: what builds the LightningModule from the space, the start temperature and the
            options below: `DNASModule` by default, or a ``_partial_`` config with
            ``_target_`` (a subclass, config-only).
        **options: `DNASModule` options (``lr``, ``arch_lr``, ``update``, ``sampling``,
            ``hard``, ``init``, ``seed``, ``activation_checkpointing``, ...).
    """

    name = "dnas"

    def __init__(
        self,
        target_flops: float | None = None,
        alpha: float = 1.0,
        cost: str = "l1",
        flops_estimator: str = "sampled",
        flops_max_realisations: int = 16,
        temperature: Mapping[str, Any] | Callback | None = None,
        regularizer: Any = None,
        module: Any = None,
        **options: Any,
    ) -> None:
        regularizer = callback_config(regularizer, FlopsRegularizer)(
            target_flops,
            weight=alpha,
            estimator=flops_estimator,
            kind=cost,
            max_realisations=flops_max_realisations,
        )
        self.regularizer = regularizer if alpha > 0 else None
        self.module_class = callback_config(module, DNASModule)
        _check_keys("", options, DNASModule, exclude={"space", "temperature"})
        temperature = callback_config(temperature, {})
        if not isinstance(temperature, Callback):  # the options of the shipped schedule
            temperature = to_plain(temperature)
            _check_keys("temperature.", temperature, GumbelTemperature)
            temperature = GumbelTemperature(**temperature)
        self.temperature = temperature
        self.module_options = options

    def build(self, space: SearchSpace) -> tuple[L.LightningModule, list[Callback]]:
        module = self.module_class(space, temperature=self.temperature.start, **self.module_options)
        callbacks: list[Callback] = [self.temperature]
        if self.regularizer is not None:
            callbacks.append(self.regularizer)
        return module, callbacks

    def outcome(self, module: L.LightningModule, callbacks: list[Callback]) -> SearchOutcome:
        if not isinstance(module, DNASModule):
            raise TypeError(f"DNAS.outcome needs the DNASModule it built, got {type(module)}")
        val_ne = module.curves.get("val_ne")
        extra: dict[str, Any] = {
            "expected_flops": round(module.expected_flops(), 1),
            "final_temperature": module.temperature,
            "warmup_steps": self.temperature.warmup_steps,
            "theta_frozen_in_warmup": self.temperature.freeze_theta_during_warmup,
        }
        if val_ne:
            # the most likely architecture on the shared supernet weights, at the last validation
            extra["supernet_val"] = {"ne": val_ne[-1][1]}
        if self.regularizer is not None:
            extra["target_flops"] = self.regularizer.target_flops
        return SearchOutcome(
            arch=module.most_likely(),
            probs=[p.detach().cpu() for p in module.arch.probs()],
            curves={k: list(v) for k, v in module.curves.items()},
            extra=extra,
        )
