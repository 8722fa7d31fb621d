"""`rankitect-arch`: merge or naively scale architectures (paper §4.2.3) and print their costs.

    rankitect-arch merge --space rankitect --data synthetic a.json b.json -o merged.json
    rankitect-arch scale --space rankitect --factor 1.5 --widen --bottleneck-factor 2 \\
        best_arch.json -o scaled.json

An input is an Arch JSON file, a search run's ``results.json`` (its ``arch``) or a search run
directory (its ``best_arch.json``). The space needs the data's `FeatureSpec`: from ``--spec``
(a JSON/YAML file of FeatureSpec fields), from ``--run-dir`` (the data and space of a
rankitect-search / rankitect-train run, from its ``.hydra/config.yaml``) or from ``--data``
(a config of ``conf/data/``, default ``synthetic``, with ``--override data.key=value``),
whose data set is loaded the way rankitect-train loads it. See docs/space.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rankitect.data.spec import FeatureSpec
from rankitect.io import atomic_write_text
from rankitect.space import SearchSpace, load_space, merge_archs, scale_arch
from rankitect.space.transform import space_config, widened_space_config


class ArchCommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankitect-arch", description="Merge or naively scale Rankitect architectures."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--space",
        help="shipped space name or space YAML (default: the --run-dir's space, else rankitect)",
    )
    src = common.add_mutually_exclusive_group()
    src.add_argument("--data", help="data config of conf/data/ (default synthetic)")
    src.add_argument("--spec", type=Path, help="JSON/YAML file of FeatureSpec fields")
    src.add_argument("--run-dir", type=Path, help="a rankitect-search/-train run directory")
    common.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override of the --data config, e.g. data.source.root=/data (repeatable)",
    )
    common.add_argument("-o", "--output", type=Path, required=True, help="output Arch JSON")
    common.add_argument("--force", action="store_true", help="overwrite existing outputs")

    merge = sub.add_parser(
        "merge", parents=[common], help="every connection and block of the inputs"
    )
    merge.add_argument("archs", nargs="+", type=Path, help="Arch JSON, results.json or run dir")
    merge.set_defaults(func=run_merge)

    scale = sub.add_parser("scale", parents=[common], help="multiply block dimensions")
    scale.add_argument("arch", type=Path, help="Arch JSON, results.json or run dir")
    scale.add_argument("--factor", type=float, required=True, help="dimension multiplier")
    scale.add_argument(
        "--blocks",
        nargs="+",
        default=["linear", "embed_fc", "dot_product"],
        help="block types whose dims are scaled (default: all connection blocks)",
    )
    scale.add_argument(
        "--widen",
        action="store_true",
        help="add the scaled dims to the space's options instead of clipping; writes the "
        "widened space beside the output as <output stem>.space.yaml",
    )
    scale.add_argument(
        "--bottleneck-factor",
        type=float,
        default=1.0,
        help="multiply the pairwise bottleneck (needs --widen; the paper uses 2)",
    )
    scale.set_defaults(func=run_scale)
    return parser


# ---- the space and its feature spec ---------------------------------------------------------


def _read_mapping(path: Path, what: str) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except OSError as err:
        raise ArchCommandError(f"{path}: cannot be read ({what}): {err}") from None
    except Exception as err:  # YAML syntax errors come in several types
        raise ArchCommandError(f"{path}: not valid JSON/YAML ({what}): {err}") from None
    if not isinstance(cfg, DictConfig):
        raise ArchCommandError(f"{path}: expected a mapping ({what})")
    return cfg


def _spec_from_file(path: Path) -> FeatureSpec:
    cfg = OmegaConf.to_container(_read_mapping(path, "a FeatureSpec"), resolve=True)
    for key in ("n_dense", "sparse_cardinalities"):
        if key not in cfg:
            raise ArchCommandError(f"{path}: field '{key}' is missing (a FeatureSpec needs it)")
    unknown = set(cfg) - {"n_dense", "sparse_cardinalities", "sparse_names", "dense_names"}
    if unknown:
        raise ArchCommandError(f"{path}: field '{sorted(unknown)[0]}' is not a FeatureSpec field")
    try:
        return FeatureSpec.from_dict(cfg)
    except (TypeError, ValueError) as err:
        raise ArchCommandError(f"{path}: {err}") from None


def _spec_from_data(data_cfg: Any, where: str) -> FeatureSpec:
    """The FeatureSpec of a data config, found by loading the data set as rankitect-train does."""
    from hydra.utils import instantiate

    try:
        datamodule = instantiate(data_cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        return datamodule.feature_spec
    except Exception as err:  # data errors of any reader, named by their source
        raise ArchCommandError(f"{where}: cannot load the data set: {err}") from None


def _compose_data(name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rankitect.cli.config import conf_dir

    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            return compose("train", overrides=[f"data={name}", *overrides]).data
    except (HydraException, OmegaConfBaseException) as err:
        raise ArchCommandError(f"--data {name} {' '.join(overrides)}: {err}") from None


def resolve_space(args: argparse.Namespace) -> tuple[Any, str | dict[str, Any]]:
    """The space of the command and its source (a name, a YAML path or a config mapping)."""
    run_cfg = None
    if args.override and (args.spec is not None or args.run_dir is not None):
        raise ArchCommandError("--override applies to --data, not to --spec or --run-dir")
    if args.run_dir is not None:
        run_cfg = _read_mapping(args.run_dir / ".hydra" / "config.yaml", "a run's config")
        if "data" not in run_cfg:
            raise ArchCommandError(
                f"{args.run_dir / '.hydra' / 'config.yaml'}: field 'data' is missing"
            )
        spec = _spec_from_data(run_cfg.data, str(args.run_dir / ".hydra" / "config.yaml"))
    elif args.spec is not None:
        spec = _spec_from_file(args.spec)
    else:
        name = args.data or "synthetic"
        spec = _spec_from_data(_compose_data(name, args.override), f"--data {name}")
    source: str | dict[str, Any] = "rankitect"
    if args.space is not None:
        source = args.space
    elif run_cfg is not None and "search_space" in run_cfg:
        source = OmegaConf.to_container(run_cfg.search_space, resolve=True)
    elif run_cfg is not None and "space" in run_cfg.get("model", {}):
        source = OmegaConf.to_container(run_cfg.model, resolve=True)["space"]
    try:
        return load_space(source, spec), source
    except (TypeError, ValueError) as err:
        raise ArchCommandError(f"space {args.space or 'of the run'}: {err}") from None


def read_arch(path: Path, space: Any) -> Any:
    """An architecture of ``space`` from an Arch JSON file, a search ``results.json`` or a
    search run directory; errors name the file (and the Choice and field)."""
    if path.is_dir():
        path = path / "best_arch.json"
    try:
        text = path.read_text()
    except OSError as err:
        raise ArchCommandError(f"{path}: cannot be read: {err.strerror or err}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArchCommandError(f"{path}: not valid JSON: {err}") from None
    if isinstance(doc, dict) and "arch" in doc:  # a search run's results.json
        doc = doc["arch"]
    try:
        return space.arch_from_json(json.dumps(doc))
    except ValueError as err:
        raise ArchCommandError(
            f"{path}: not an architecture of space {space.name!r}: {err}"
        ) from None


# ---- the commands ----------------------------------------------------------------------------


def _cost_line(label: str, space: Any, arch: Any) -> str:
    return f"  {label:<40} {space.flops(arch):>14,} {space.params(arch):>14,}"


def _header() -> str:
    return f"  {'architecture':<40} {'FLOPs/example':>14} {'dense params':>14}"


def write_outputs(files: dict[Path, str], force: bool) -> None:
    """Write every file atomically, after checking that none exists (unless ``force``)."""
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise ArchCommandError(f"{existing[0]}: already exists; pass --force to overwrite it")
    for path, text in files.items():
        atomic_write_text(path, text)


def _train_hint(output: Path, space_arg: str | None) -> str:
    space = f" model.space={space_arg}" if space_arg else ""
    return f"train it: rankitect-train model=arch model.arch_file={output}{space}"


def run_merge(args: argparse.Namespace) -> int:
    space, _ = resolve_space(args)
    archs = [read_arch(p, space) for p in args.archs]
    try:
        merged = merge_archs(space, archs)
    except ValueError as err:
        raise ArchCommandError(f"merge: {err}") from None
    write_outputs({args.output: merged.to_json() + "\n"}, args.force)
    print(f"space {space.name!r}")
    print(_header())
    for path, arch in zip(args.archs, archs, strict=True):
        print(_cost_line(str(path), space, arch))
    print(_cost_line(f"merged -> {args.output}", space, merged))
    print(_train_hint(args.output, args.space))
    return 0


def run_scale(args: argparse.Namespace) -> int:
    space, source = resolve_space(args)
    arch = read_arch(args.arch, space)
    space_out = args.output.with_name(f"{args.output.stem}.space.yaml")
    if args.widen and not isinstance(space, SearchSpace):
        raise ArchCommandError(
            f"--widen writes the widened space as a config, which only Choice spaces have; "
            f"space {space.name!r} is a {type(space).__name__}"
        )
    try:
        result = scale_arch(
            space,
            arch,
            args.factor,
            blocks=args.blocks,
            widen=args.widen,
            bottleneck_factor=args.bottleneck_factor,
        )
    except ValueError as err:
        raise ArchCommandError(f"scale: {err}") from None
    files = {args.output: result.arch.to_json() + "\n"}
    if args.widen:
        base_cfg = space_config(source) if isinstance(source, str) else source
        cfg = widened_space_config(base_cfg, space, result.space)
        files[space_out] = OmegaConf.to_yaml(OmegaConf.create(cfg))
    write_outputs(files, args.force)
    print(f"space {space.name!r}" + (f" -> {result.space.name!r}" if args.widen else ""))
    for d in result.dims or ():
        note = "  clipped to the largest option" if d.clipped else ""
        print(
            f"  choice {d.choice} {d.block}: {d.before} x {args.factor:g} = {d.target:g} "
            f"-> {d.after}{note}"
        )
    if args.widen and result.space.bottleneck != space.bottleneck:
        print(f"  pairwise bottleneck: {space.bottleneck} -> {result.space.bottleneck}")
    print(_header())
    print(_cost_line(str(args.arch), space, arch))
    print(_cost_line(f"scaled -> {args.output}", result.space, result.arch))
    if args.widen:
        print(f"wrote the widened space to {space_out}")
        print(_train_hint(args.output, str(space_out)))
    else:
        print(_train_hint(args.output, args.space))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ArchCommandError as err:
        print(f"rankitect-arch: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
