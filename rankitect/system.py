"""The training system's settings that are not a Trainer or DataLoader argument: the ``system``
group of ``conf/train.yaml`` (torch intra-op threads, ``torch.compile``, activation
checkpointing), applied the same way by `rankitect-train` and by `rankitect-tune-system`'s
trials (docs/system.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rankitect.models.blocks import MLP, is_positive_int
from rankitect.space.supernet import ChoiceNet

SYSTEM_KEYS = ("threads", "compile", "activation_checkpointing")


def check_system(system: Mapping[str, Any] | None) -> dict[str, Any]:
    """``system`` as a dict with every key of `SYSTEM_KEYS` (a missing key: off / torch's
    default), each value checked; a ValueError names the bad ``system.<key>``."""
    system = dict(system or {})
    unknown = sorted(set(system) - set(SYSTEM_KEYS))
    if unknown:
        raise ValueError(f"system.{unknown[0]}: unknown setting; known: {list(SYSTEM_KEYS)}")
    threads = system.get("threads")
    if threads is not None and not is_positive_int(threads):
        raise ValueError(f"system.threads must be an int >= 1 or null, got {threads!r}")
    for key in ("compile", "activation_checkpointing"):
        if not isinstance(system.get(key, False), bool):
            raise ValueError(f"system.{key} must be true or false, got {system[key]!r}")
    return {
        "threads": threads,
        "compile": system.get("compile", False),
        "activation_checkpointing": system.get("activation_checkpointing", False),
    }


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute activations in the backward pass instead of keeping them: per layer of every
    `MLP` (the baselines' towers) and per Choice of an architecture's model. Returns how many
    modules were switched; a model with neither is refused (it has no block to checkpoint)."""
    found = [m for m in model.modules() if isinstance(m, MLP | ChoiceNet)]
    if not found:
        raise ValueError(
            f"system.activation_checkpointing: {type(model).__name__} has no MLP or Choice "
            "to checkpoint"
        )
    for m in found:
        m.activation_checkpointing = True
    return len(found)


def apply_threads(system: Mapping[str, Any]) -> None:
    """Set torch's intra-op threads for this process (before any training work)."""
    if system["threads"] is not None:
        torch.set_num_threads(int(system["threads"]))


def prepare_model(system: Mapping[str, Any], model: nn.Module) -> nn.Module:
    """``model`` with activation checkpointing and ``torch.compile`` applied, in place:
    `nn.Module.compile` keeps the module (its FLOPs, parameters and state-dict keys), and
    compiles its forward on the first call."""
    if system["activation_checkpointing"]:
        enable_activation_checkpointing(model)
    if system["compile"]:
        model.compile()
    return model
