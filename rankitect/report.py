"""Collect the ``results.json`` of training and search runs into one table, find the Pareto
front of FLOPs per example against a quality metric, and write it as a PNG, a CSV and a
Markdown table: the body of `rankitect-report` (docs/report.md).

A run is classified from its ``results.json``: ``"kind": "search"`` is a search run
(`rankitect.search.outcome.write_search_results`); one with ``val``/``test`` metrics is a
training run (`rankitect.train.train`), a trained architecture (``kind`` ``arch``) when its
model is built from an arch file, a hand-designed ``baseline`` otherwise.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rankitect.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# metric column -> whether higher is better
METRICS = {
    f"{split}_{name}": name == "auc"
    for split in ("test", "val")
    for name in ("ne", "logloss", "auc")
}
METRIC_NAMES = {"ne": "NE", "logloss": "log loss", "auc": "AUC"}
COLUMNS = [
    "label",
    "kind",
    "model",
    "method",
    "space",
    "data",
    "target_flops",
    "flops",
    "dense_params",
    "params",
    *(f"{s}_{m}" for s in ("val", "test") for m in ("ne", "logloss", "auc")),
    "proxy_ne",
    "ne_gain_pct",
    "on_front",
    "search_seconds",
    "search_cpu_seconds",
    "fit_seconds",
    "seed",
    "arch_file",
    "run_dir",
]


class ReportError(Exception):
    """No report can be made: nothing to report, a broken file under ``strict``, a bad option."""


class _Unusable(Exception):
    """A results.json that parses but lacks what the table needs (the message says what)."""


@dataclass
class Report:
    table: pd.DataFrame
    metric: str
    dirs: list[Path]
    baseline: str | None = None
    # data set -> the baseline's NE on it (its mean over runs), for the data sets it ran on
    baseline_ne: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric]

    @property
    def datasets(self) -> list[str]:
        """The data sets of the runs with the metric, each with its own front."""
        return list(dict.fromkeys(self.table.loc[self.table[self.metric].notna(), "data"]))


def metric_label(metric: str) -> str:
    split, name = metric.split("_", 1)
    return f"{split} {METRIC_NAMES[name]}"


def find_results(dirs: Iterable[str | Path]) -> list[Path]:
    """Every ``results.json`` under ``dirs`` (searched recursively; a file is taken as is),
    each once even when the directories overlap, in a stable order."""
    found: dict[Path, Path] = {}
    for d in map(Path, dirs):
        if d.is_file():
            paths = [d]
        elif d.is_dir():
            paths = sorted(
                p
                for p in d.rglob("results.json")
                if not any(part.startswith(".") for part in p.relative_to(d).parts)
            )
        else:
            raise ReportError(f"{d}: no such file or directory")
        for p in paths:
            found.setdefault(p.resolve(), p)
    return list(found.values())


def load_results(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from e
    except UnicodeDecodeError as e:
        raise ReportError(f"{path}: not UTF-8 text ({e.reason})") from e
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, found a {type(data).__name__}")
    return data


def _as_number(value: Any) -> float | None:
    return float(value) if isinstance(value, Real) and not isinstance(value, bool) else None


def _number(res: dict[str, Any], key: str) -> float | None:
    return _as_number(res.get(key))


def _require_number(res: dict[str, Any], key: str) -> float:
    value = _number(res, key)
    if value is None:
        found = "missing" if key not in res else f"{res[key]!r}, not a number"
        raise _Unusable(f'field "{key}" is {found}')
    return value


def _config(res: dict[str, Any], *keys: str) -> Any:
    node: Any = res.get("config")
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


UNKNOWN_DATA = "unknown data"


def _data_name(res: dict[str, Any]) -> str:
    """The data source's class, and its file or folder where it reads one."""
    source = _config(res, "data", "source")
    if not isinstance(source, dict) or not source.get("_target_"):
        return UNKNOWN_DATA
    name = str(source["_target_"]).rsplit(".", 1)[-1]
    where = source.get("root") or source.get("path")
    return f"{name}:{Path(str(where)).name}" if where else name


def _space_name(space: Any) -> str | None:
    if isinstance(space, dict):
        return str(space["name"]) if space.get("name") else None
    return str(space) if space else None


def _search_source(arch_file: str, cache: dict[Path, dict | None]) -> dict[str, Any] | None:
    """The results of the search run whose ``best_arch.json`` is ``arch_file``, if readable."""
    path = Path(arch_file).expanduser().resolve().parent / "results.json"
    if path not in cache:
        try:
            res = load_results(path) if path.is_file() else None
        except ReportError:
            res = None
        cache[path] = res if res is not None and res.get("kind") == "search" else None
    return cache[path]


def _flops_short(x: float) -> str:
    return f"{x / 1e6:.3g}M" if x >= 1e6 else f"{x / 1e3:.3g}k" if x >= 1e3 else f"{x:.0f}"


def _method_label(method: str, target: float | None) -> str:
    return method if target is None else f"{method}@{_flops_short(target)}"


def run_row(path: Path, res: dict[str, Any], sources: dict[Path, dict | None]) -> dict[str, Any]:
    """One table row for the run whose ``results.json`` is ``path``; `_Unusable` if it lacks a
    field the table needs."""
    model = res.get("model")
    if not isinstance(model, str) or not model:
        raise _Unusable('field "model" is missing or not a string')
    row: dict[str, Any] = {
        "model": model,
        "flops": _require_number(res, "flops"),
        "params": _number(res, "params"),
        "dense_params": _number(res, "dense_params"),
        "seed": _number(res, "seed"),
        "data": _data_name(res),
        "run_dir": str(path.parent),
    }
    if res.get("kind") == "search":
        method = res.get("method")
        if not isinstance(method, str) or not method:
            raise _Unusable('search run without a "method"')
        target = _number(res, "target_flops")
        arch_file = path.parent / "best_arch.json"
        supernet_val = res.get("supernet_val")
        proxy = supernet_val.get("ne") if isinstance(supernet_val, dict) else res.get("ne")
        row.update(
            kind="search",
            method=method,
            space=res.get("space"),
            target_flops=target,
            # A search's "params" are the space's count, which excludes the embedding table.
            dense_params=row["dense_params"] if row["dense_params"] is not None else row["params"],
            proxy_ne=_as_number(proxy),
            search_seconds=_number(res, "search_seconds"),
            search_cpu_seconds=_number(res, "search_cpu_seconds"),
            arch_file=str(arch_file) if arch_file.is_file() else None,
            label=f"{_method_label(method, target)} (search)",
        )
    elif isinstance(res.get("val"), dict) or isinstance(res.get("test"), dict):
        arch_file = _config(res, "model", "arch_file")
        row["fit_seconds"] = _number(res, "fit_seconds")
        if arch_file:
            source = _search_source(str(arch_file), sources)
            row.update(
                kind="arch",
                arch_file=str(arch_file),
                label=model,
                space=_space_name(_config(res, "model", "space")),
            )
            if source is not None and isinstance(source.get("method"), str):
                target = _number(source, "target_flops")
                row.update(
                    method=source["method"],
                    target_flops=target,
                    space=row["space"] or source.get("space"),
                    # Older training results lack dense_params; the search counted the same.
                    dense_params=_number(source, "params")
                    if row["dense_params"] is None
                    else row["dense_params"],
                    search_seconds=_number(source, "search_seconds"),
                    search_cpu_seconds=_number(source, "search_cpu_seconds"),
                    label=_method_label(source["method"], target),
                )
        else:
            row.update(
                kind="arch" if model.startswith("arch:") else "baseline", method=model, label=model
            )
    else:
        raise _Unusable(
            'neither a search run ("kind": "search") nor a training run ("val"/"test" metrics)'
        )
    for split in ("val", "test"):
        metrics = res.get(split)
        if metrics is None:
            continue
        if not isinstance(metrics, dict):
            raise _Unusable(f'field "{split}" is not a mapping of metrics')
        for name in ("ne", "logloss", "auc"):
            row[f"{split}_{name}"] = _number(metrics, name)
    return row


def final_row(search: dict[str, Any], final: Any) -> dict[str, Any]:
    """The retrained final model of a search run (its ``final`` block, conf/final): a
    searched architecture at its retrained FLOPs and metrics (the mean over its seeds)."""
    if not isinstance(final, dict):
        raise _Unusable('field "final" is not a mapping')
    row = {
        k: search.get(k)
        for k in ("method", "space", "data", "target_flops", "seed", "run_dir")
        + ("search_seconds", "search_cpu_seconds")
    }
    row.update(
        kind="arch",
        model=f"final:{search['method']}",
        flops=_require_number(final, "flops"),
        params=_number(final, "params"),
        arch_file=final.get("arch_file"),
        label=_method_label(search["method"], search.get("target_flops")),
    )
    for split in ("val", "test"):
        metrics = final.get(split)
        if isinstance(metrics, dict):
            for name in ("ne", "logloss", "auc"):
                row[f"{split}_{name}"] = _number(metrics, name)
    return row


def _retrains_of_finals(loaded: dict[Path, Any]) -> set[Path]:
    """The finalists' and winners' own runs under a search's ``final/`` directory: its
    ``final`` block stands for them (baselines trained there stay rows of their own)."""
    finals = [
        p.parent / "final"
        for p, res in loaded.items()
        if isinstance(res, dict) and res.get("kind") == "search" and "final" in res
    ]
    return {
        p for p in loaded for f in finals if f in p.parents and (f / "baselines") not in p.parents
    }


def _disambiguate(table: pd.DataFrame) -> pd.Series:
    """Labels made unique: repeated ones get their space, their data, their seed, or a run
    number."""
    labels = table["label"].copy()
    for label, group in table.groupby("label", sort=False):
        if len(group) == 1:
            continue
        spaces, seeds, data = group["space"], group["seed"], group["data"]
        if spaces.notna().all() and spaces.nunique() == len(group):
            labels[group.index] = [f"{label} ({sp})" for sp in spaces]
        elif data.nunique() == len(group):  # the folder or file where there is one
            labels[group.index] = [f"{label} ({d.rsplit(':', 1)[-1]})" for d in data]
        elif seeds.notna().all() and seeds.nunique() == len(group):
            labels[group.index] = [f"{label} (seed {int(s)})" for s in seeds]
        else:
            labels[group.index] = [f"{label} #{i}" for i in range(1, len(group) + 1)]
    return labels


def pareto_mask(
    cost: Sequence[float], value: Sequence[float], higher_is_better: bool
) -> np.ndarray:
    """Whether each point is on the Pareto front of (``cost`` lower is better, ``value``).

    A point is dominated when another is at least as good in both coordinates and strictly
    better in one; points that tie in both dominate neither, so all of them stay on the front.
    """
    c = np.asarray(cost, dtype=float)
    v = np.asarray(value, dtype=float) * (-1.0 if higher_is_better else 1.0)
    no_worse = (c[None, :] <= c[:, None]) & (v[None, :] <= v[:, None])
    better = (c[None, :] < c[:, None]) | (v[None, :] < v[:, None])
    return ~(no_worse & better).any(axis=1)


def build_report(
    dirs: Sequence[str | Path],
    metric: str = "test_ne",
    baseline: str | None = None,
    strict: bool = False,
) -> Report:
    """Read every ``results.json`` under ``dirs`` into a `Report`.

    Unparseable or unusable files are skipped with a warning naming them, or raise
    `ReportError` with ``strict``. Raises `ReportError` when no run has ``metric``.
    """
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    dirs = [Path(d) for d in dirs]
    where = ", ".join(map(str, dirs))
    paths = find_results(dirs)
    if not paths:
        raise ReportError(f"no results.json under {where}")
    rows, skipped, seen, sources = [], [], {}, {}
    loaded: dict[Path, Any] = {}
    for path in paths:
        try:
            loaded[path] = load_results(path)
        except ReportError as e:
            loaded[path] = e
    nested = _retrains_of_finals(loaded)
    for path in paths:
        if path in nested:
            continue
        try:
            res = loaded[path]
            if isinstance(res, ReportError):
                raise res
            row = run_row(path, res, sources)
            extra = (
                [final_row(row, res["final"])] if row["kind"] == "search" and "final" in res else []
            )
        except (ReportError, _Unusable) as e:
            reason = str(e).removeprefix(f"{path}: ")
            if strict:
                raise ReportError(f"{path}: {reason}") from e
            log.warning("skipping %s: %s", path, reason)
            skipped.append((path, reason))
            continue
        key = json.dumps(res, sort_keys=True)
        if key in seen:
            # A copied run directory: the same run, shown once.
            log.warning("skipping %s: the same results as %s", path, seen[key])
            skipped.append((path, f"the same results as {seen[key]}"))
            continue
        seen[key] = path
        rows += [row, *extra]
    if not rows:
        raise ReportError(f"no usable results.json under {where} ({len(skipped)} skipped)")
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table["label"] = _disambiguate(table)
    has_metric = table[metric].notna()
    if not has_metric.any():
        kinds = ", ".join(f"{n} {k}" for k, n in table["kind"].value_counts().items())
        hint = (
            " (a search reports no test metrics: retrain its best_arch.json)"
            if (table["kind"] == "search").any()
            else ""
        )
        raise ReportError(f"no run under {where} has {metric}: found {kinds} runs{hint}")
    # NE on one data set says nothing about NE on another: one front per data set.
    table["on_front"] = False
    for _, group in table[has_metric].groupby("data", sort=False):
        table.loc[group.index, "on_front"] = pareto_mask(
            group["flops"], group[metric], METRICS[metric]
        )
    datasets = table.loc[has_metric, "data"].unique()
    if len(datasets) > 1:
        log.info("%d data sets, one front each: %s", len(datasets), ", ".join(datasets))
    # Runs with the metric first, by data set, each group by FLOPs.
    order = table.assign(_no_metric=~has_metric).sort_values(
        ["_no_metric", "data", "flops", "label"]
    )
    table = order.drop(columns="_no_metric").reset_index(drop=True)
    report = Report(table=table, metric=metric, dirs=dirs, skipped=skipped)
    if baseline is not None:
        _add_ne_gain(report, baseline)
    return report


def _add_ne_gain(report: Report, baseline: str) -> None:
    """NE gain in % over the baseline's NE on the split of the chosen metric (the paper's
    "NE gain": positive is better), on the same data set (none where the baseline did not run
    on a run's data); the mean NE of its runs if it has several."""
    table = report.table
    ne = f"{report.metric.split('_', 1)[0]}_ne"
    matches = table[(table["kind"] != "search") & (table["model"] == baseline)]
    if matches.empty:
        models = sorted(table.loc[table["kind"] != "search", "model"].unique())
        raise ReportError(
            f"--baseline {baseline!r} matches no training run; models found: "
            f"{', '.join(models) or 'none'} (train it first, e.g. rankitect-train "
            f"model={baseline}, on the same data)"
        )
    values = matches.dropna(subset=[ne])
    if values.empty:
        raise ReportError(f"--baseline {baseline!r}: its runs have no {ne}")
    for data, group in values.groupby("data", sort=False):
        if len(group) > 1:
            log.info("baseline %s on %s: mean %s of %d runs", baseline, data, ne, len(group))
        report.baseline_ne[data] = float(group[ne].mean())
    report.baseline = baseline
    base = table["data"].map(report.baseline_ne)
    table["ne_gain_pct"] = (base - table[ne]) / base * 100.0


KIND_STYLE = {  # kind -> legend, marker, colour
    "baseline": ("baseline", "s", "tab:gray"),
    "arch": ("searched architecture (retrained)", "o", "tab:blue"),
    "search": ("search run", "^", "tab:green"),
}


def plot_report(report: Report, title: str | None = None) -> bytes:
    """PNG of the chosen metric against FLOPs: one point per run with the metric, the front
    as a step line with its points ringed; one panel per data set."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric, table = report.metric, report.table
    datasets = report.datasets
    fig = Figure(figsize=(8.5, 5.5 * len(datasets)))
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    title = title or f"{metric_label(metric)} vs FLOPs"
    for ax, data in zip(axes, datasets, strict=True):
        pts = table[table[metric].notna() & (table["data"] == data)]
        _plot_panel(ax, pts, report)
        ax.set_title(title if len(datasets) == 1 else f"{title}: {data}")
    fig.tight_layout()
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax, data in zip(axes, datasets, strict=True):
        _place_labels(ax, table[table[metric].notna() & (table["data"] == data)], metric, renderer)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _plot_panel(ax: Any, pts: pd.DataFrame, report: Report) -> None:
    metric = report.metric
    for kind, (name, marker, colour) in KIND_STYLE.items():
        sub = pts[pts["kind"] == kind]
        if not sub.empty:
            ax.scatter(
                sub["flops"],
                sub[metric],
                marker=marker,
                s=45,
                c=colour,
                label=name,
                edgecolors="black",
                linewidths=0.5,
                zorder=3,
            )
    front = pts[pts["on_front"]].sort_values(
        ["flops", metric], ascending=[True, report.higher_is_better]
    )
    ax.step(front["flops"], front[metric], where="post", color="tab:red", lw=1.2, zorder=2)
    ax.scatter(
        front["flops"],
        front[metric],
        s=160,
        facecolors="none",
        edgecolors="tab:red",
        linewidths=1.5,
        label="Pareto front",
        zorder=4,
    )
    lo, hi = pts["flops"].min(), pts["flops"].max()
    if lo > 0 and hi / lo >= 10:
        ax.set_xscale("log")
    ax.set_xlabel("FLOPs per example")
    better = "higher" if report.higher_is_better else "lower"
    ax.set_ylabel(f"{metric_label(metric)} ({better} is better)")
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.08, which="minor")
    ax.margins(x=0.12, y=0.1)
    ax.legend(fontsize=8, loc="best")


LABEL_OFFSETS = (5, -13, 17, -25, 29, -37, 41, -49)  # points above/below a marker


def _place_labels(ax: Any, pts: pd.DataFrame, metric: str, renderer: Any) -> None:
    """Label every point at the first vertical offset where its label overlaps no label placed
    before it (a leader line when moved), so runs at nearly equal coordinates stay readable."""
    placed: list[Any] = []
    for _, r in pts.sort_values(["flops", metric]).iterrows():
        weight = "bold" if r["kind"] == "baseline" else "normal"

        def label(dy: int, arrow: bool, r: pd.Series = r, weight: str = weight) -> Any:
            line = {"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if arrow else None
            return ax.annotate(
                r["label"],
                (r["flops"], r[metric]),
                xytext=(8, dy),
                textcoords="offset points",
                fontsize=8,
                fontweight=weight,
                arrowprops=line,
            )

        boxes = []
        for dy in LABEL_OFFSETS:
            probe = label(dy, arrow=False)
            boxes.append(probe.get_window_extent(renderer))
            probe.remove()
            if not any(boxes[-1].overlaps(b) for b in placed):
                break
        else:  # crowded all around: keep the first position
            boxes = boxes[:1]
        dy = LABEL_OFFSETS[len(boxes) - 1]
        label(dy, arrow=dy != LABEL_OFFSETS[0])
        placed.append(boxes[-1])


def _fmt(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in ("flops", "dense_params", "params", "target_flops"):
        return f"{value:,.0f}"
    if column == "ne_gain_pct":
        return f"{value:+.2f}"
    if column.endswith("seconds"):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


MD_HEADERS = {  # column -> header; the chosen metric is added, all-empty columns left out
    "on_front": "front",
    "label": "run",
    "kind": "kind",
    "space": "space",
    "flops": "FLOPs",
    "dense_params": "dense params",
    "val_ne": "val NE",
    "test_ne": "test NE",
    "test_logloss": "test log loss",
    "test_auc": "test AUC",
    "ne_gain_pct": "NE gain %",
    "search_seconds": "search s",
    "run_dir": "run dir",
}


def markdown(report: Report, title: str | None = None) -> str:
    """The table as Markdown: front rows marked and bold, runs without the metric last."""
    t = report.table
    headers = dict(MD_HEADERS)
    if report.metric not in headers:
        at = list(headers).index("ne_gain_pct")
        items = list(headers.items())
        headers = dict([*items[:at], (report.metric, metric_label(report.metric)), *items[at:]])
    datasets = report.datasets
    if len(datasets) > 1:  # the data set is the first column after the front mark
        headers = {"on_front": headers.pop("on_front"), "data": "data", **headers}
    cols = [c for c in headers if c in ("on_front", "label") or t[c].notna().any()]
    n_plot = int(t[report.metric].notna().sum())
    better = "higher" if report.higher_is_better else "lower"
    fronts = (
        "Pareto front" if len(datasets) == 1 else f"One Pareto front per data set ({len(datasets)})"
    )
    lines = [
        f"# {title or metric_label(report.metric) + ' vs FLOPs'}",
        "",
        f"{fronts} of FLOPs per example (lower is better) against {metric_label(report.metric)}"
        f" ({better} is better): {int(t['on_front'].sum())} of {n_plot} runs with "
        f"{report.metric} are on it (marked). {len(t) - n_plot} runs have no {report.metric}.",
    ]
    if report.baseline is not None:
        ne = f"{report.metric.split('_', 1)[0]}_ne"
        on = "; ".join(
            f"{v:.4f}" if len(datasets) == 1 else f"{v:.4f} on {d}"
            for d, v in report.baseline_ne.items()
        )
        lines.append(
            f"NE gain % = (NE_base - NE) / NE_base * 100 on {ne}, against `{report.baseline}` "
            f"on the same data ({ne} {on})."
        )
    lines += ["", "| " + " | ".join(headers[c] for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in t.iterrows():
        cells = []
        for c in cols:
            if c == "on_front":
                cells.append("yes" if r[c] else "")
            elif c == "label" and r["on_front"]:
                cells.append(f"**{_fmt(r[c], c)}**")
            else:
                cells.append(_fmt(r[c], c))
        lines.append("| " + " | ".join(cells) + " |")
    if report.skipped:
        lines += ["", f"Skipped {len(report.skipped)} results.json:"]
        lines += [f"- `{p}`: {reason}" for p, reason in report.skipped]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``pareto.png``, ``report.csv`` (the whole table) and ``report.md`` atomically."""
    out_dir = Path(out_dir)
    return {
        "png": atomic_write_bytes(out_dir / "pareto.png", plot_report(report, title)),
        "csv": atomic_write_text(out_dir / "report.csv", report.table.to_csv(index=False)),
        "md": atomic_write_text(out_dir / "report.md", markdown(report, title)),
    }
