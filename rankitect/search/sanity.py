"""Checks that say when a search's result means less than it seems: a FLOPs target no
architecture of the space reaches, a search that ended before its policy ever moved; and the
closing line that says how the found architecture compares."""

from __future__ import annotations

from typing import Any

from rankitect.space.space import DecisionSpace


def _descend(space: DecisionSpace, values: list[int]) -> tuple[list[int], int]:
    """Set each decision in turn to its cheapest value until no change lowers the FLOPs."""
    flops, improved = space.flops(space.decode(values)), True
    while improved:
        improved = False
        for i, decision in enumerate(space.decisions):
            for v in range(decision.cardinality):
                candidate = [*values[:i], v, *values[i + 1 :]]
                f = space.flops(space.decode(candidate))
                if f < flops:
                    values, flops, improved = candidate, f, True
    return values, flops


def cheapest(space: DecisionSpace) -> tuple[Any, int]:
    """A cheapest architecture of ``space`` and its FLOPs, by coordinate descent over the
    decisions from every decision at value 0 and from the seed architecture. FLOPs grow with
    every dimension and connection in the shipped spaces, so this finds their minimum; in
    general it is an architecture that exists, an upper bound of the minimum."""
    starts = [[0] * space.num_decisions]
    if space.has_seed:
        starts.append(space.values(space.seed_arch()).tolist())
    values, flops = min((_descend(space, s) for s in starts), key=lambda r: r[1])
    return space.decode(values), flops


def target_flops_of(method_cfg: Any) -> tuple[str, float] | None:
    """The config key and value of the FLOPs target a method config sets (one-shot RL, DNAS:
    ``target_flops``; sampling: ``sampler.target_flops``); None when it sets none (then the
    target is the seed architecture's FLOPs, which the seed reaches)."""
    if method_cfg.get("target_flops") is not None:
        return "method.target_flops", float(method_cfg["target_flops"])
    sampler = method_cfg.get("sampler") or {}
    if sampler.get("target_flops") is not None:
        return "method.sampler.target_flops", float(sampler["target_flops"])
    return None


def unreachable_target(space: DecisionSpace, target: tuple[str, float] | None) -> str | None:
    """A warning when the ``(key, value)`` target is below the FLOPs of the cheapest
    architecture of ``space``."""
    if target is None:
        return None
    key, value = target
    _, flops = cheapest(space)
    if value >= flops:
        return None
    return (
        f"{key}={value:,.0f} is unreachable: the cheapest architecture of space {space.name!r} "
        f"costs {flops:,} FLOPs per example ({flops / value:,.1f}x the target), so the search "
        f"returns one above it; set {key} to at least {flops}"
    )


def unsearched(extra: dict[str, Any], steps: int | None) -> str | None:
    """A warning when the search never updated its architecture distribution, so that the
    exported architecture is the initial distribution's mode rather than a found one."""
    if extra.get("policy_updates") == 0:
        why = "the RL policy was never updated (policy_updates: 0)"
        fix = "method.warmup_steps or method.samples_per_update"
    elif (
        extra.get("theta_frozen_in_warmup")
        and steps is not None
        and steps <= extra.get("warmup_steps", 0)
    ):
        why = (
            f"every one of the {steps} steps was warm-up, with the architecture logits frozen "
            f"(temperature.warmup_steps: {extra['warmup_steps']})"
        )
        fix = "method.temperature.warmup_steps"
    else:
        return None
    return (
        f"{why}: best_arch.json is the initial distribution's most likely architecture, not a "
        f"searched one. Give the search more steps (trainer.max_epochs, trainer.max_steps) or "
        f"lower {fix}"
    )


def comparison(results: dict[str, Any]) -> str:
    """How the found architecture compares, from what the method measured (one clause)."""
    val = results.get("supernet_val") or {}
    if "ne" in val and "ne_baseline" in val:
        pct = (val["ne"] - val["ne_baseline"]) / val["ne_baseline"] * 100
        side = "worse" if pct > 0 else "better"
        return (
            f"validation NE {val['ne']:.4f} on the shared supernet weights, {abs(pct):.1f}% "
            f"{side} than the in-place baseline's {val['ne_baseline']:.4f}"
        )
    if "ne" in val:
        return f"validation NE {val['ne']:.4f} on the shared supernet weights"
    if isinstance(results.get("ne"), float):
        evaluator = ((results.get("config") or {}).get("method") or {}).get("evaluator") or {}
        name = "-SiGeo score" if str(evaluator.get("_target_", "")).endswith("SiGeoProxy") else "NE"
        return f"proxy {name} {results['ne']:.4f} (the last successive-halving rung)"
    return "no NE measured by the search itself"
