"""What a search ends with: a retrained model compared with the baselines, not a supernet score.

After any method, `finalize`:

1. takes the search's top-k *distinct* candidates within the FLOPs target (`finalist_archs`:
   the method's own ranked candidates, or the mode and near-modes of its final decision
   distribution);
2. retrains each from scratch briefly, with successive halving over growing epoch budgets;
3. retrains the winner under the baselines' recipe (`rankitect.train.train`: early stopping on
   validation AUC, the best checkpoint tested), over one or more seeds;
4. trains the named baselines the same way in the same run (or reads an earlier run's
   ``results.json``), and
5. exports the winner (`torch.export`, TorchScript where export fails) so it serves without
   Rankitect.

Every retrain lives in its own directory under ``<run>/final/``; one with a ``results.json``
is read back instead of rerun, so a resumed search does not retrain what it finished.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rankitect.io import atomic_write_text
from rankitect.search.outcome import SearchOutcome
from rankitect.search.sampling.halving import successive_halving
from rankitect.space import materialize
from rankitect.space.spaces import conf_dir
from rankitect.train import group_config, train

log = logging.getLogger(__name__)

METRICS = ("auc", "logloss", "ne")


@dataclass(frozen=True)
class FinalConfig:
    """``cfg.final`` of `rankitect-search` (conf/search.yaml documents every key)."""

    enabled: bool = True
    finalists: int = 4
    halving_epochs: tuple[int, ...] = (1, 2)
    eta: float = 2.0
    seeds: tuple[int, ...] = (0,)
    max_epochs: int = 20
    patience: int = 2
    batch_size: int | None = None
    lr: float = 1e-3
    gradient_clip_val: float | None = None
    baselines: tuple[Any, ...] = ()
    export: bool = True
    draws: int = 512
    near_target: float = 0.9
    include_seed: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> FinalConfig:
        raw = dict(
            OmegaConf.to_container(cfg, resolve=True)
            if isinstance(cfg, DictConfig)
            else (cfg or {})
        )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"final: unknown key(s) {unknown}; known: {sorted(known)}")
        for key in ("halving_epochs", "seeds", "baselines"):
            if key in raw:
                raw[key] = tuple(raw[key] or ())
        out = cls(**raw)
        positive = {
            "finalists": out.finalists,
            "max_epochs": out.max_epochs,
            "patience": out.patience,
            "draws": out.draws,
        }
        for key, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"final.{key} must be an int >= 1, got {value!r}")
        if not out.seeds:
            raise ValueError("final.seeds must name at least one seed")
        if (
            not out.halving_epochs
            or list(out.halving_epochs) != sorted(out.halving_epochs)
            or (out.halving_epochs[0] < 1)
        ):
            raise ValueError(
                f"final.halving_epochs must be ascending ints >= 1, got {list(out.halving_epochs)}"
            )
        if not out.eta > 1:
            raise ValueError(f"final.eta must be > 1, got {out.eta}")
        if not out.lr > 0:
            raise ValueError(f"final.lr must be > 0, got {out.lr}")
        if not 0 <= out.near_target <= 1:
            raise ValueError(f"final.near_target must be in [0, 1], got {out.near_target}")
        return out


# ---- finalists ----------------------------------------------------------------------------


def finalist_archs(
    space: Any,
    outcome: SearchOutcome,
    k: int,
    target_flops: float | None,
    draws: int = 512,
    seed: int = 0,
    near_target: float = 0.9,
) -> list[Any]:
    """Up to ``k`` distinct candidate architectures within the FLOPs target, best first.

    The method's ranked ``outcome.candidates`` when it has them (the sampling search's proxy
    ranking), else the found architecture, then the most probable of ``draws`` architectures
    drawn from the final decision distribution. Candidates above the target are not eligible;
    when none is within it the space's seed is the fallback if it is, else a ValueError. When
    no finalist reaches ``near_target`` x the target, the best-ranked candidate that does
    takes the last place, so a smaller final model is one that won on NE, not by default.
    """
    ranked = list(outcome.candidates) or [outcome.arch, *_near_modes(space, outcome, draws, seed)]
    eligible, seen = [], set()
    for arch in ranked:
        key = arch.to_json()
        if key in seen or (target_flops is not None and space.flops(arch) > target_flops):
            continue
        seen.add(key)
        eligible.append(arch)
    out = eligible[:k]
    if target_flops is not None and out:
        floor = near_target * target_flops
        near = [a for a in eligible if space.flops(a) >= floor]
        if near and all(space.flops(a) < floor for a in out):
            out[-1 if len(out) == k else len(out) :] = [near[0]]
    seed_arch = eligible_seed(space, target_flops)
    if not out:
        if seed_arch is not None:
            log.warning(
                "no searched candidate is within the FLOPs target %s: the space's seed "
                "architecture (%d FLOPs) is the only finalist",
                target_flops,
                space.flops(seed_arch),
            )
            return [seed_arch]
        raise ValueError(
            f"no candidate architecture has FLOPs <= the target {target_flops:,.0f}; the found "
            f"one has {space.flops(outcome.arch):,}"
        )
    return out


def space_seed(space: Any) -> Any | None:
    """The hand-designed architecture the space was grown from, if it has one."""
    return space.seed_arch() if getattr(space, "has_seed", False) else None


def eligible_seed(space: Any, target_flops: float | None) -> Any | None:
    """The space's seed when it is within the FLOPs target."""
    seed = space_seed(space)
    if seed is None or (target_flops is not None and space.flops(seed) > target_flops):
        return None
    return seed


def _near_modes(space: Any, outcome: SearchOutcome, draws: int, seed: int) -> list[Any]:
    """Distinct architectures drawn from the per-decision distribution, most probable first."""
    probs = [p.detach().double().cpu() for p in outcome.probs]
    gen = torch.Generator().manual_seed(seed)
    values = torch.stack([torch.multinomial(p, draws, True, generator=gen) for p in probs], 1)
    logp = sum(torch.log(p.clamp_min(1e-300))[values[:, i]] for i, p in enumerate(probs))
    archs: dict[str, tuple[float, Any]] = {}
    for v, lp in zip(values, logp.tolist(), strict=True):
        arch = space.decode(v)
        key = arch.to_json()
        archs[key] = max(archs.get(key, (-math.inf, arch)), (lp, arch), key=lambda t: t[0])
    return [a for _, a in sorted(archs.values(), key=lambda t: -t[0])]


# ---- retraining -----------------------------------------------------------------------------


def recipe_config(
    cfg: DictConfig, final: FinalConfig, model: Mapping[str, Any], seed: int, epochs: int
) -> DictConfig:
    """A `rankitect.train.train` config: the search's data, ``model``, the final recipe (the
    shipped training module and callbacks, conf/module/ctr.yaml and conf/callbacks/default.yaml,
    with ``final.lr`` and ``final.patience``)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if final.batch_size is not None:
        data["batch_size"] = final.batch_size
    trainer = {
        "accelerator": cfg.trainer.get("accelerator", "cpu"),
        "devices": 1,
        "max_epochs": epochs,
        "log_every_n_steps": 10,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "gradient_clip_val": final.gradient_clip_val,
    }
    if cfg.trainer.get("precision") is not None:
        trainer["precision"] = cfg.trainer.precision
    module = {**OmegaConf.to_container(group_config("module", "ctr")), "lr": final.lr}
    callbacks = OmegaConf.to_container(group_config("callbacks", "default"))
    callbacks["early_stopping"]["patience"] = final.patience
    # the search's paths; rankitect.train.train sets paths.output_dir to the retrain's directory
    paths = OmegaConf.to_container(cfg.paths) if "paths" in cfg else {}
    return OmegaConf.create(
        {
            "seed": int(seed),
            "name": None,
            "resume": None,
            "data": data,
            "model": dict(model),
            "trainer": trainer,
            "logger": None,
            "module": module,
            "callbacks": callbacks,
            "paths": paths,
        }
    )


def retrain(run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir``, or read the results of a run that finished there."""
    done = run_dir / "results.json"
    if done.is_file():
        run = json.loads(done.read_text())
        ours = OmegaConf.to_container(cfg, resolve=True)
        diffs = recipe_differences(ours, run.get("config", {}))
        if run.get("config", {}).get("model") != ours["model"]:
            diffs["model"] = {"final": ours["model"], "baseline": run["config"].get("model")}
        if diffs:
            raise ValueError(
                f"{done}: a finished retrain under other settings ({_recipe_note(diffs)[2:-1]}); "
                "delete that directory to retrain, or use another hydra.run.dir"
            )
        return run
    return train(cfg, run_dir)


def arch_model(space_cfg: Mapping[str, Any], arch_file: Path) -> dict[str, Any]:
    """``model=arch`` of ``arch_file`` in the space ``space_cfg`` (its ``_target_`` dropped, or
    instantiate would build the space without its feature spec)."""
    space = {k: v for k, v in space_cfg.items() if k != "_target_"}
    return {
        "_target_": "rankitect.space.build_arch_model",
        "_partial_": True,
        "space": space,
        "arch_file": str(arch_file),
        "dropout": None,
    }


def baseline_model(spec: Any) -> tuple[str, dict[str, Any] | None, Path | None]:
    """``(name, model config, earlier results.json)`` of one ``final.baselines`` entry: a
    shipped model name, ``{name: model config}``, or a path to a ``results.json``."""
    if isinstance(spec, str) and spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"final.baselines: results file {spec!r} does not exist")
        return path.parent.name, None, path
    if isinstance(spec, str):
        path = conf_dir() / "model" / f"{spec}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
            raise ValueError(f"final.baselines: unknown model {spec!r}; shipped: {shipped}")
        return spec, OmegaConf.to_container(OmegaConf.load(path)), None
    if isinstance(spec, Mapping) and len(spec) == 1:
        ((name, model),) = spec.items()
        if isinstance(model, Mapping) and "_target_" in model:
            return str(name), dict(model), None
    raise ValueError(
        f"final.baselines: an entry is a shipped model name, a results.json path or "
        f"{{name: model config with _target_}}, got {spec!r}"
    )


# the settings of a training that make two of them comparable (dotted paths in its config)
RECIPE_KEYS = (
    "data.source",
    "data.batch_size",
    "module.lr",
    "module.weight_decay",
    "trainer.gradient_clip_val",
    "trainer.max_epochs",
    "callbacks.early_stopping.patience",
)
# where a key of RECIPE_KEYS was in a results.json of an older version
OLD_RECIPE_KEYS = {"callbacks.early_stopping.patience": "early_stopping.patience"}


def recipe_differences(
    ours: Mapping[str, Any], theirs: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``{key: {"final": ours, "baseline": theirs}}`` for each `RECIPE_KEYS` entry on which two
    training configs differ: a baseline read from an earlier run must have been trained on the
    same data under the same recipe, or the comparison says nothing about the architectures."""

    def get(cfg: Mapping[str, Any], key: str) -> Any:
        value: Any = cfg
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None and key in OLD_RECIPE_KEYS:
            return get(cfg, OLD_RECIPE_KEYS[key])
        return value

    return {
        k: {"final": get(ours, k), "baseline": get(theirs, k)}
        for k in RECIPE_KEYS
        if get(ours, k) != get(theirs, k)
    }


def summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``flops``, ``params`` and the mean ``val``/``test`` metrics of runs over seeds (with
    ``seeds`` and the sample spread when there are several)."""
    out: dict[str, Any] = {"flops": int(runs[0]["flops"]), "params": int(runs[0]["params"])}
    for split in ("val", "test"):
        out[split] = {m: statistics.mean(r[split][m] for r in runs) for m in METRICS}
        if len(runs) > 1:
            out[f"{split}_sd"] = {m: statistics.stdev(r[split][m] for r in runs) for m in METRICS}
    if len(runs) > 1:
        out["seeds"] = [
            {
                "seed": r["seed"],
                "val": {m: r["val"][m] for m in METRICS},
                "test": {m: r["test"][m] for m in METRICS},
            }
            for r in runs
        ]
    if "bayes_ne" in runs[0]:
        out["bayes_ne"] = runs[0]["bayes_ne"]
    return out


def versus(final: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float]:
    """The found model against one baseline: its test NE gain in % of the baseline's NE
    (positive: better) and its FLOPs as a multiple of the baseline's."""
    ne = baseline["test"]["ne"]
    return {
        "ne_gain_pct": 100 * (ne - final["test"]["ne"]) / ne,
        "flops_ratio": final["flops"] / max(baseline["flops"], 1),
    }


def final_comparison(results: Mapping[str, Any]) -> dict[str, Any]:
    """The found model against the baselines as flat figures (a wandb run summary's): test
    AUC, log loss and NE and the FLOPs of ``final/...`` and of each ``baseline/<name>/...``,
    with the `versus` figures; empty for a search without its final retrain (``final=none``)."""
    if "final" not in results:
        return {}

    def figures(run: Mapping[str, Any]) -> dict[str, Any]:
        return {**{f"test_{m}": run["test"][m] for m in METRICS}, "flops": run["flops"]}

    final = results["final"]
    out = {f"final/{k}": v for k, v in figures(final).items()}
    for name, b in results.get("baselines", {}).items():
        for k, v in {**figures(b), **versus(final, b)}.items():
            out[f"baseline/{name}/{k}"] = v
    return out


def comparison_lines(final: Mapping[str, Any], baselines: Mapping[str, Any]) -> list[str]:
    """The plain statement of the found model against each baseline (test split)."""
    t = final["test"]
    lines = [
        f"found model: test AUC {t['auc']:.4f}, log loss {t['logloss']:.4f}, NE "
        f"{t['ne']:.4f} at {final['flops']:,} FLOPs"
    ]
    if final.get("is_seed"):
        race = final.get("seed_race")
        lines.append(
            "the found model is the space's seed, the model it was grown from: "
            + (
                f"the halving's winner (val NE {race['searched_val_ne']:.4f}) did not beat it "
                f"(val NE {race['seed_val_ne']:.4f}) under the full recipe"
                if race
                else "the search's best finalist"
            )
        )
    if "bayes_ne" in final:
        bayes = final["bayes_ne"]["test"]
        lines.append(
            f"Bayes-optimal test NE {bayes:.4f}: the found model is "
            f"{100 * (t['ne'] - bayes) / bayes:.2f}% above it"
        )
    for name, b in baselines.items():
        gain = versus(final, b)
        verdict = (
            "beats"
            if t["auc"] > b["test"]["auc"] and t["logloss"] < b["test"]["logloss"]
            else "does not beat"
        )
        lines.append(
            f"vs {name}: {verdict} it on test AUC and log loss ({t['auc']:.4f} vs "
            f"{b['test']['auc']:.4f}, {t['logloss']:.4f} vs {b['test']['logloss']:.4f}); NE gain "
            f"{gain['ne_gain_pct']:+.2f}%; FLOPs ratio {gain['flops_ratio']:.3f}"
            + _recipe_note(b.get("recipe_differs", {}))
        )
    return lines


def _recipe_note(diffs: Mapping[str, Mapping[str, Any]]) -> str:
    if not diffs:
        return ""
    parts = ", ".join(f"{k} {d['final']} vs {d['baseline']}" for k, d in diffs.items())
    return f" (NOT the same recipe: {parts})"


# ---- export ---------------------------------------------------------------------------------


def export_model(
    model: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor], path: Path
) -> str:
    """Save ``model`` (eval mode) as a program that runs with torch alone; returns its format.

    `torch.export` with a dynamic batch dimension; TorchScript tracing where export fails.
    """
    model = model.eval()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # torch.export wants its suffix
    try:
        batch = torch.export.Dim("batch", min=2)
        program = torch.export.export(
            model, example, dynamic_shapes=({0: batch}, {0: batch}), strict=False
        )
        torch.export.save(program, tmp)
        kind = "torch.export"
    except Exception as err:  # noqa: BLE001 - any export failure falls back to TorchScript
        log.warning("torch.export failed (%s); saving a TorchScript trace instead", err)
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, example), tmp)
        kind = "torchscript"
    tmp.replace(path)
    return kind


def load_trained(space: Any, arch: Any, checkpoint: str) -> torch.nn.Module:
    """The winner's model with the weights of its best checkpoint."""
    model = materialize(space, arch)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    )
    return model


# ---- the pipeline ---------------------------------------------------------------------------


def finalize(
    cfg: DictConfig,
    space: Any,
    outcome: SearchOutcome,
    datamodule: Any,
    output_dir: Path,
    target_flops: float | None,
) -> dict[str, Any]:
    """Finalists -> halving -> winner retrained -> baselines -> export; the ``final``,
    ``baselines``, ``final_candidates`` and ``final_halving`` blocks of ``results.json``."""
    final = FinalConfig.from_config(cfg.get("final"))
    started = time.perf_counter()
    root = output_dir / "final"
    space_cfg = OmegaConf.to_container(cfg.search_space, resolve=True)
    candidates = finalist_archs(
        space,
        outcome,
        final.finalists,
        target_flops,
        final.draws,
        int(cfg.seed),
        final.near_target,
    )
    files = []
    for i, arch in enumerate(candidates):
        files.append(root / "finalists" / f"arch{i}.json")
        atomic_write_text(files[-1], arch.to_json() + "\n")
    log.info(
        "final: %d finalists (FLOPs %s) within target %s%s",
        len(candidates),
        [space.flops(a) for a in candidates],
        target_flops,
        f"; finalist {candidates.index(space_seed(space))} is the space's seed"
        if space_seed(space) in candidates
        else "",
    )
    by_index = dict(enumerate(candidates))

    def evaluate(indices: list[int], epochs: int, rung: int) -> list[float]:
        scores = []
        for i in indices:
            run = retrain(
                root / f"rung{rung}" / f"arch{i}",
                recipe_config(cfg, final, arch_model(space_cfg, files[i]), final.seeds[0], epochs),
            )
            scores.append(float(run["val"]["ne"]))
            log.info(
                "final: rung %d (%d epochs) finalist %d: val NE %.4f", rung, epochs, i, scores[-1]
            )
        return scores

    rungs = (
        successive_halving(list(by_index), final.halving_epochs, evaluate, eta=final.eta)
        if len(candidates) > 1
        else []
    )
    winner = rungs[-1].candidates[0] if rungs else 0
    arch, arch_file, name = candidates[winner], files[winner], "winner"

    def full(name: str, arch_file: Path, seed: int) -> dict[str, Any]:
        model = arch_model(space_cfg, arch_file)
        return retrain(
            root / f"{name}_s{seed}", recipe_config(cfg, final, model, seed, final.max_epochs)
        )

    first = full(name, arch_file, final.seeds[0])
    seed_arch = eligible_seed(space, target_flops) if final.include_seed else None
    race = None
    if seed_arch is not None and seed_arch != arch:
        seed_file = root / "finalists" / "seed.json"
        atomic_write_text(seed_file, seed_arch.to_json() + "\n")
        seed_run = full("seed", seed_file, final.seeds[0])
        race = {"seed_val_ne": seed_run["val"]["ne"], "searched_val_ne": first["val"]["ne"]}
        # the searched model has to beat the model the space was grown from to replace it
        if seed_run["val"]["ne"] <= first["val"]["ne"]:
            arch, arch_file, name, first = seed_arch, seed_file, "seed", seed_run
        race["winner"] = "seed" if name == "seed" else "searched"
        log.info(
            "final: under the full recipe the halving's winner has val NE %.4f, the space's "
            "seed %.4f: the %s is the final model",
            race["searched_val_ne"],
            race["seed_val_ne"],
            "seed" if name == "seed" else "searched model",
        )
    winner_runs = [first, *(full(name, arch_file, s) for s in final.seeds[1:])]
    found = {
        "arch": arch.to_dict(),
        "arch_file": str(arch_file),
        "is_seed": arch == space_seed(space),
        "seed_race": race,
        "target_flops": target_flops,
        **summary(winner_runs),
    }
    baselines = {}
    for spec in final.baselines:
        name, model, earlier = baseline_model(spec)
        if earlier is not None:
            run = json.loads(earlier.read_text())
            baselines[name] = summary([run])
            ours = OmegaConf.to_container(
                recipe_config(cfg, final, {}, final.seeds[0], final.max_epochs), resolve=True
            )
            diffs = recipe_differences(ours, run.get("config", {}))
            if diffs:
                baselines[name]["recipe_differs"] = diffs
                log.warning(
                    "final.baselines: %s was trained under another recipe than the final model "
                    "(%s): the comparison is not like for like",
                    earlier,
                    _recipe_note(diffs)[2:-1],
                )
            continue
        runs = [
            retrain(
                root / "baselines" / f"{name}_s{s}",
                recipe_config(cfg, final, model, s, final.max_epochs),
            )
            for s in final.seeds
        ]
        baselines[name] = summary(runs)
    if final.export:
        model = load_trained(space, arch, winner_runs[0]["best_epoch_checkpoint"])
        dense, sparse, _ = next(iter(datamodule.val_dataloader()))
        path = output_dir / "final_model.pt2"
        found["export"] = {
            "path": str(path),
            "format": export_model(model, (dense[:8], sparse[:8]), path),
            "checkpoint": winner_runs[0]["best_epoch_checkpoint"],
        }
    return {
        "final": found,
        "baselines": baselines,
        "final_candidates": [
            {"arch": a.to_dict(), "flops": int(space.flops(a)), "is_seed": a == space_seed(space)}
            for a in candidates
        ],
        "final_halving": [
            {"epochs": r.budget, "finalists": r.candidates, "val_ne": r.scores} for r in rungs
        ],
        "final_seconds": round(time.perf_counter() - started, 2),
    }
