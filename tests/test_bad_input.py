"""Bad input, tried systematically (property-based): architecture JSON, config values, data rows.

Every case either succeeds (a valid input, or a bad row skipped and counted where the user asked
for that) or raises a clear error: a `ValueError` (or a documented subclass such as
`DataFormatError`) whose message names the Choice/field, the config key, or the file and line.
Anything else (a KeyError, TypeError, IndexError, AttributeError from deep inside, a wrong skip
count, a partial cache entry) fails the test. Each case is tallied in `CENSUS` by group, kind
and outcome; ``benchmarks/bad_input_census.py`` runs these tests and prints the table
(docs/robustness.md).
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from rankitect.callbacks.rl import RLSearchCallback
from rankitect.cli.config import conf_dir as cli_conf_dir
from rankitect.data import (
    CategoricalCSVReader,
    CriteoReader,
    CTRDataModule,
    DataFormatError,
    FeatureSpec,
)
from rankitect.models import DLRM, DNN, DCNv2, DeepFM
from rankitect.search.dnas import DNAS
from rankitect.search.oneshot import OneShotRL
from rankitect.space import Arch, build_arch_model, load_space
from rankitect.space.spaces import conf_dir

# outcome names of the census
ACCEPTED, CLEAR, SKIPPED, CRASH = "accepted", "clear error", "skipped and counted", "crash"
CENSUS: Counter[tuple[str, str, str]] = Counter()

# Reproducible in CI: derandomize makes hypothesis draw the same examples on every run.
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    # no shrinking: a failure prints its rows (Row.__repr__), and shrinking files is slow
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def expect(
    group: str,
    kind: str,
    fn: Callable[[], object],
    clear: Callable[[Exception], bool],
    tally_accepted: bool = True,
):
    """Runs ``fn``; records ``accepted`` if it returns (unless the caller tallies that itself),
    ``clear error`` if it raises a `ValueError` that ``clear`` approves, else ``crash`` (and
    fails the test)."""
    try:
        result = fn()
    except ValueError as err:
        if clear(err):
            CENSUS[group, kind, CLEAR] += 1
            return err
        CENSUS[group, kind, CRASH] += 1
        raise AssertionError(f"{group}/{kind}: unclear error {err!r}") from err
    except Exception as err:
        CENSUS[group, kind, CRASH] += 1
        raise AssertionError(f"{group}/{kind}: crashed with {err!r}") from err
    if tally_accepted:
        CENSUS[group, kind, ACCEPTED] += 1
    return result


# =============================================================================== 3. data rows

FRAPPE_HEADER = ["label", "user", "item", "daytime"]
N_DENSE, N_SPARSE = 13, 26
CRITEO_NAMES = ["label"] + [f"I{i + 1}" for i in range(N_DENSE)]
CRITEO_NAMES += [f"C{i + 1}" for i in range(N_SPARSE)]

# How a row is damaged, and whether the reader must then reject it. Each damaged row has
# exactly one problem, so the expected error column is known by construction.
ROW_DAMAGE = (
    "none",
    "truncated",  # cut before its last separator: too few fields
    "extra_field",
    "missing_field",
    "non_utf8_categorical",  # raw bytes in a categorical value: a valid (odd) value
    "non_utf8_number",  # in the label (Frappe) or a dense column (Criteo): bad
    "huge_int_categorical",  # beyond int64 in a categorical field: a valid value
    "huge_int_dense",  # 19-40 digits in a dense column: a valid number (Criteo only)
    "overflow_dense",  # 400 digits, beyond float64: bad (Criteo only)
    "long_fraction_dense",  # 0.(400 digits): a valid number (Criteo only)
    "nan_string",  # nan / NaN / inf / -inf / Infinity in a label or dense column: bad
    "bad_label",  # 2, -1, 0.5, empty: bad
)
NAN_STRINGS = ("nan", "NaN", "inf", "-inf", "Infinity", "NA")
CRITEO_ONLY = {"huge_int_dense", "overflow_dense", "long_fraction_dense"}


class Row:
    """One generated line: its bytes, whether it is bad, and the column an error must name."""

    def __init__(self, fields: list[bytes], sep: bytes, bad: bool, column: str | None, kind: str):
        self.fields, self.sep, self.bad, self.column, self.kind = fields, sep, bad, column, kind
        self.raw = sep.join(fields)

    def __repr__(self) -> str:
        return f"Row({self.kind}, bad={self.bad}, column={self.column}, {self.raw!r})"

    @property
    def label(self) -> float:
        return float(self.fields[0])


def make_row(fmt: str, damage: str, rng: random.Random) -> Row:
    """A Frappe-like (``label,user,item,daytime``) or Criteo (label, 13 ints, 26 hashes) row
    with one ``damage`` (hypothesis draws the damage and the seed; the values come from it)."""
    sep = b"," if fmt == "frappe" else b"\t"
    label = rng.choice([b"0", b"1"])
    if fmt == "frappe":
        names = FRAPPE_HEADER
        fields = [label] + [str(rng.randint(0, 30)).encode() for _ in range(3)]
        cat_cols, num_cols = [1, 2, 3], [0]
    else:
        names = CRITEO_NAMES
        dense = [rng.choice([b"", str(rng.randint(-5, 10**6)).encode()]) for _ in range(N_DENSE)]
        hashes = [b"", b"68fd1e64", b"80e26c9b", b"fb936136"]
        fields = [label, *dense, *(rng.choice(hashes) for _ in range(N_SPARSE))]
        cat_cols = list(range(1 + N_DENSE, 1 + N_DENSE + N_SPARSE))
        num_cols = list(range(1 + N_DENSE))
    bad, column = True, None
    if damage == "none":
        bad = False
    elif damage == "truncated":
        keep = rng.randint(1, len(fields) - 1)  # fields kept, the last one maybe cut short
        last = fields[keep - 1]
        cut = rng.randint(int(keep == 1), len(last))  # an empty line would be blank
        fields = fields[: keep - 1] + [last[:cut]]
    elif damage == "extra_field":
        fields = fields + [b"x"]
    elif damage == "missing_field":
        del fields[rng.randrange(len(fields))]
    elif damage in ("non_utf8_categorical", "huge_int_categorical"):
        j = rng.choice(cat_cols)
        if damage == "non_utf8_categorical":
            fields[j] += bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 4)))
        else:
            fields[j] = str(rng.randint(2**63, 10**40)).encode()
        bad = False
    elif damage in ("non_utf8_number", "nan_string", "bad_label"):
        j = 0 if damage == "bad_label" else rng.choice(num_cols)
        if damage == "non_utf8_number":
            fields[j] = fields[j][:1] + bytes([rng.randint(0x80, 0xFF)])
        elif damage == "nan_string":
            fields[j] = rng.choice(NAN_STRINGS).encode()
        else:
            fields[j] = rng.choice([b"2", b"-1", b"0.5", b"", b"10", b"1.01"])
        column = names[j]
    else:  # Criteo dense columns
        j = rng.randint(1, N_DENSE)
        if damage == "huge_int_dense":
            fields[j] = str(rng.randint(2**63, 10**40)).encode()
            bad = False
        elif damage == "overflow_dense":
            fields[j] = b"9" * 320  # float64 ends near 1.8e308
            column = names[j]
        else:
            fields[j] = b"0." + b"3" * 320
            bad = False
    return Row(fields, sep, bad, column, damage)


@st.composite
def data_files(draw, fmt: str):
    """Lines of one file: good rows, a few damaged ones, blank lines, CRLF or LF, and whether
    the file ends with a line end."""
    kinds = [k for k in ROW_DAMAGE if fmt == "criteo" or k not in CRITEO_ONLY]
    damages = draw(st.lists(st.sampled_from(kinds), min_size=2, max_size=10))
    damages.insert(draw(st.integers(0, len(damages))), "none")  # at least one good row
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    lines = [make_row(fmt, d, rng) for d in damages]
    return {
        "rows": lines,
        "blank_after": sorted(draw(st.lists(st.integers(0, len(lines)), max_size=2))),
        "eol": draw(st.sampled_from([b"\n", b"\r\n"])),
        "trailing_eol": draw(st.booleans()),
    }


def write_file(path: Path, spec: dict, header: bytes | None) -> list[tuple[int, Row]]:
    """Writes the file; returns ``(1-based line number, row)`` of every data row."""
    eol = spec["eol"]
    lines: list[bytes] = [] if header is None else [header]
    numbered = []
    for i, row in enumerate(spec["rows"]):
        lines.append(row.raw)
        numbered.append((len(lines), row))
        lines += [b""] * spec["blank_after"].count(i)
    body = eol.join(lines) + (eol if spec["trailing_eol"] else b"")
    path.write_bytes(body)
    return numbered


def check_error(err: Exception, path: Path, numbered: list[tuple[int, Row]]) -> bool:
    """The error is a DataFormatError naming ``path``, the first bad row's line and column."""
    first = next(((ln, r) for ln, r in numbered if r.bad), None)
    if not isinstance(err, DataFormatError) or Path(err.path) != path:
        return False
    if first is None:
        return False
    line, row = first
    return err.line == line and err.column == row.column and f"line {line}" in str(err)


def _load(reader, on_bad_row: str, cache_dir: Path | None):
    dm = CTRDataModule(
        reader, cache=cache_dir is not None, cache_dir=cache_dir, on_bad_row=on_bad_row
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _check_data_rows(fmt: str, files: dict[str, dict], on_bad_row: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        header = b",".join(n.encode() for n in FRAPPE_HEADER) if fmt == "frappe" else None
        names = {"train": "train.csv", "val": "valid.csv", "test": "test.csv"}
        if fmt == "criteo":
            names = {s: f"{s}.tsv" for s in names}
        paths = {s: root / n for s, n in names.items()}
        numbered = {s: write_file(paths[s], files[s], header) for s in paths}
        reader = (
            CategoricalCSVReader(root=root)
            if fmt == "frappe"
            else CriteoReader(**{s: str(p) for s, p in paths.items()}, encoding="hash")
        )
        cache = root / "cache"
        n_bad = {s: sum(r.bad for _, r in numbered[s]) for s in paths}
        group = f"data/{fmt}/{on_bad_row}"
        if on_bad_row == "error" and any(n_bad.values()):
            # the first file read with a bad row fails: readers go train, val, test
            s = next(s for s in ("train", "val", "test") if n_bad[s])
            kind = next(r.kind for _, r in numbered[s] if r.bad)  # the row the error is about
            expect(
                group,
                kind,
                lambda: _load(reader, "error", cache),
                lambda e: check_error(e, paths[s], numbered[s]),
            )
        else:
            dm = expect(
                group, "rows", lambda: _load(reader, on_bad_row, cache), lambda e: False, False
            )
            for s in paths:
                good = [r for _, r in numbered[s] if not r.bad]
                split = dm.split(s)
                assert len(split) == len(good), (s, len(split), len(good))
                assert split.label.tolist() == [r.label for r in good]
                assert dm.bad_rows[str(paths[s])] == n_bad[s]
                if fmt == "criteo":
                    _check_dense(split.dense.numpy(), good)
            for s in paths:  # tally every row by its damage
                for _, r in numbered[s]:
                    CENSUS[group, r.kind, SKIPPED if r.bad else ACCEPTED] += 1
        # a failed load leaves no cache entry (and no temporary folder) behind
        entries = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
        loaded = on_bad_row == "skip" or not any(n_bad.values())
        assert len(entries) == int(loaded), entries


def _check_dense(dense: np.ndarray, good: list[Row]) -> None:
    """Dense features against Python's float parse: log1p(max(x, 0)), 0 where empty."""
    expected = np.array(
        [
            [0.0 if f == b"" else math.log1p(max(float(f), 0.0)) for f in r.fields[1 : 1 + N_DENSE]]
            for r in good
        ]
    ).reshape(-1, N_DENSE)
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    assert np.isfinite(dense).all()


@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
@pytest.mark.parametrize("fmt", ["frappe", "criteo"])
@SETTINGS
@given(data=st.data())
def test_bad_data_rows(fmt, on_bad_row, data):
    files = {s: data.draw(data_files(fmt), label=s) for s in ("train", "val", "test")}
    _check_data_rows(fmt, files, on_bad_row)


def test_missing_header_and_cache_after_failure(tmp_path):
    """A Frappe file without its header is a file-level error in either mode; a failed load
    caches nothing, and the fixed file then loads fresh (no stale or partial entry is read)."""
    header, good, bad = b"label,user,item\n", b"1,a,b\n0,c,d\n", b"1,a,b\n7,c,d\n"
    for s in ("train", "valid", "test"):
        (tmp_path / f"{s}.csv").write_bytes(header + good)
    (tmp_path / "train.csv").write_bytes(good)  # header missing
    cache = tmp_path / "cache"
    for mode in ("error", "skip"):
        err = expect(
            "data/frappe/" + mode,
            "missing_header",
            lambda m=mode: _load(CategoricalCSVReader(root=tmp_path), m, cache),
            lambda e: isinstance(e, DataFormatError) and e.line == 1 and "train.csv" in e.path,
        )
        assert "no label column 'label'" in str(err)
    (tmp_path / "train.csv").write_bytes(header + bad)  # header back, a bad label on line 3
    err = expect(
        "data/frappe/error",
        "bad_label",
        lambda: _load(CategoricalCSVReader(root=tmp_path), "error", cache),
        lambda e: isinstance(e, DataFormatError) and (e.line, e.column) == (3, "label"),
    )
    assert not cache.exists() or not any(cache.iterdir())
    (tmp_path / "train.csv").write_bytes(header + b"1,a,b\n0,c,d\n1,e,f\n")  # fixed
    dm = _load(CategoricalCSVReader(root=tmp_path), "error", cache)
    assert dm.split("train").label.tolist() == [1.0, 0.0, 1.0]
    assert len(list(cache.iterdir())) == 1
    again = _load(CategoricalCSVReader(root=tmp_path), "error", cache)  # from the cache
    assert again.split("train").label.tolist() == [1.0, 0.0, 1.0]
    assert again.split("train").sparse.tolist() == dm.split("train").sparse.tolist()


# =============================================================================== 1. arch JSON

SPEC = FeatureSpec(n_dense=3, sparse_cardinalities=(5, 7, 4))
SPACE_NAMES = ("generic", "rankitect")


@functools.cache
def shipped_space(name: str):
    return load_space(name, SPEC)


ODD_VALUES = (
    None,
    True,
    False,
    -1,
    2**70,
    -(2**70),
    1.5,
    math.nan,
    math.inf,
    "8",
    "linear",
    [],
    {},
    {"a": 1},
    [[2]],
    ["1"],
    [1.0],
)  # fmt: skip  (none of them is a valid value of any Arch field)
ARCH_MUTATIONS = (
    "none",
    "wrong_type",  # a field set to a value of another type (or an odd value of its type)
    "missing_field",
    "unknown_field",  # an extra key, e.g. a Hydra `_target_`
    "bad_dim",  # negative, zero, huge, float, bool or string dims
    "input_out_of_range",  # negative, huge, this Choice's own or a later Choice's output
    "duplicate_input",
    "unknown_block",
    "wrong_choice_count",
    "bad_top_level",  # not an object with a 'choices' list
    "invalid_json",  # truncated text, or nesting deeper than the parser's recursion limit
    "non_utf8_file",  # bytes that are not UTF-8 in the arch file
)
# an Arch document's own error messages; every one names the Choice and field, or the document
ARCH_MESSAGES = re.compile(
    r"choice \d+, field '[^']+'|field 'choices'|not valid JSON|an Arch document is an object"
    r"|unknown Arch field|an Arch needs at least one Choice"
)


def mutate(doc: dict, kind: str, rng: random.Random) -> object:
    """``doc`` (a valid Arch as a dict) with one ``kind`` of damage; see `ARCH_MUTATIONS`."""
    choices = doc["choices"]
    i = rng.randrange(len(choices))
    ch = choices[i]
    connection = "inputs" in ch
    if kind == "wrong_type":
        ch[rng.choice(sorted(ch))] = rng.choice(ODD_VALUES)
    elif kind == "missing_field":
        del ch[rng.choice(sorted(ch))]
    elif kind == "unknown_field":
        target = rng.choice([doc, ch])
        target[rng.choice(["_target_", "extra", "Block"])] = "rankitect.models.DNN"
    elif kind == "bad_dim":
        ch["dim"] = rng.choice([-1, 0, -(2**40), 2**70, 1.5, 16.0, True, "16", math.nan])
    elif kind == "input_out_of_range":
        bad = rng.choice([-1, -(2**70), 2**70, 2 + i, 2 + i + rng.randint(1, 5)])
        if connection:
            ch["inputs"] = ch["inputs"] + [bad]
        else:
            ch[rng.choice(["left", "right"])] = bad
    elif kind == "duplicate_input":
        if connection:
            ch["inputs"] = ch["inputs"] + [rng.choice(ch["inputs"])]
        else:  # a pairwise block takes no inputs list at all
            ch["inputs"] = [ch["left"], ch["left"]]
    elif kind == "unknown_block":
        ch["block"] = rng.choice(["mlp", "Linear", "", "dot-product", "linear "])
    elif kind == "wrong_choice_count":
        doc["choices"] = rng.choice([[], choices[:-1] or [], choices + [choices[-1]]])
    elif kind == "bad_top_level":
        return rng.choice(
            [[doc], 3, "choices", None, {}, {"choices": {}}, {"choices": None}, {"arch": doc}]
        )
    return doc


def arch_text(doc: object, kind: str, rng: random.Random) -> bytes:
    text = json.dumps(doc).encode()
    if kind == "invalid_json":
        if rng.random() < 0.2:
            return b"[" * 100_000
        return text[: rng.randrange(len(text))]  # every proper prefix of an object is invalid
    if kind == "non_utf8_file":
        at = rng.randrange(len(text) + 1)
        return text[:at] + bytes([rng.randint(0x80, 0xFF)]) + text[at:]
    return text


@SETTINGS
@given(
    space_name=st.sampled_from(SPACE_NAMES),
    kind=st.sampled_from(ARCH_MUTATIONS),
    seed=st.integers(0, 2**32 - 1),
)
def test_bad_arch_json(space_name, kind, seed):
    space = shipped_space(space_name)
    rng = random.Random(seed)
    valid = space.sample(torch.Generator().manual_seed(seed))
    doc = mutate(json.loads(valid.to_json()), kind, rng)
    raw = arch_text(doc, kind, rng)

    def clear(err: Exception) -> bool:
        return type(err) is ValueError and ARCH_MESSAGES.search(str(err)) is not None

    if kind != "non_utf8_file":
        text = raw.decode()
        if kind not in ("wrong_choice_count", "none"):  # fewer / more Choices can be a valid DAG
            expect("arch", kind, lambda: Arch.from_json(text), clear)
        arch = expect("arch", kind, lambda: space.arch_from_json(text), clear)
        assert (kind == "none") == isinstance(arch, Arch)
        if kind == "none":
            assert arch == valid
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best_arch.json"
        path.write_bytes(raw)
        model = expect(
            "arch_file",
            kind,
            lambda: build_arch_model(SPEC, space_name, path),
            lambda e: type(e) is ValueError and str(e).startswith(f"arch file {str(path)!r}"),
        )
        assert (kind == "none") == (not isinstance(model, Exception))


# =============================================================================== 2. config values

DIM_VALUES = (-1, 0, -(2**40), 2.5, math.nan, math.inf)  # for ints >= 1
PROB_VALUES = (-0.1, 1.5, math.nan, math.inf, -math.inf)  # for probabilities
POSITIVE_VALUES = (0, 0.0, -1.0, math.nan, math.inf, -math.inf)  # for finite reals > 0
NON_NEGATIVE_VALUES = (-1.0, -1e-9, math.nan, -math.inf)  # for reals >= 0


def _generic(**override):
    cfg = dict(OmegaConf.to_container(OmegaConf.load(conf_dir() / "search_space/generic.yaml")))
    cfg.update(override)
    return lambda: load_space(cfg, SPEC)


def _dims(v):
    return {"linear": [16, v], "embed_fc": [2], "dot_product": [2]}


# (entry point, config key the error must name, bad values, build(value))
CONFIG_CASES = [
    ("DNN", "embedding_dim", DIM_VALUES, lambda v: DNN(SPEC, embedding_dim=v)),
    ("DNN", "hidden_units", DIM_VALUES, lambda v: DNN(SPEC, hidden_units=[8, v])),
    ("DNN", "dropout", PROB_VALUES + (1.0,), lambda v: DNN(SPEC, dropout=v)),
    ("DNN", "emb_l2", NON_NEGATIVE_VALUES, lambda v: DNN(SPEC, emb_l2=v)),
    ("DNN", "init_std", NON_NEGATIVE_VALUES, lambda v: DNN(SPEC, emb_init_std=v)),
    ("DCNv2", "num_layers", DIM_VALUES, lambda v: DCNv2(SPEC, num_cross_layers=v)),
    ("DLRM", "bottom_hidden_units", DIM_VALUES, lambda v: DLRM(SPEC, bottom_hidden_units=[v])),
    ("DLRM", "top_hidden_units", DIM_VALUES, lambda v: DLRM(SPEC, top_hidden_units=[v])),
    ("DeepFM", "embedding_dim", DIM_VALUES, lambda v: DeepFM(SPEC, embedding_dim=v)),
    ("dnas", "target_flops", POSITIVE_VALUES, lambda v: DNAS(target_flops=v)),
    ("dnas", "alpha", NON_NEGATIVE_VALUES, lambda v: DNAS(alpha=v)),
    ("dnas", "temperature.start", POSITIVE_VALUES, lambda v: DNAS(temperature={"start": v})),
    ("dnas", "temperature.end", POSITIVE_VALUES, lambda v: DNAS(temperature={"end": v})),
    ("dnas", "warmup_steps", PROB_VALUES + (-3,), lambda v: DNAS(temperature={"warmup_steps": v})),
    ("dnas", "lr", POSITIVE_VALUES, lambda v: DNAS(lr=v).build(shipped_space("generic"))),
    ("dnas", "unknown key", ("x",), lambda v: DNAS(tempreature={"start": 1.0})),
    ("oneshot_rl", "target_flops", POSITIVE_VALUES, lambda v: _rl(target_flops=v, alpha=0.5)),
    ("oneshot_rl", "alpha", NON_NEGATIVE_VALUES, lambda v: _rl(alpha=v)),
    ("oneshot_rl", "policy_lr", POSITIVE_VALUES, lambda v: _rl(policy_lr=v)),
    ("oneshot_rl", "is_clip", (0, -1.0, math.nan, -math.inf), lambda v: _rl(is_clip=v)),
    ("oneshot_rl", "warmup_steps", PROB_VALUES + (-3,), lambda v: _rl(warmup_steps=v)),
    ("oneshot_rl", "unknown key", ("x",), lambda v: OneShotRL(alpah=0.5)),
    ("space", "embedding_dim", DIM_VALUES, lambda v: _generic(embedding_dim=v)()),
    ("space", "bottleneck", DIM_VALUES, lambda v: _generic(bottleneck=v)()),
    ("space", "connection_prob", PROB_VALUES + (0.0, 1.0), lambda v: _generic(connection_prob=v)()),
    ("space", "num_choices", DIM_VALUES, lambda v: _generic(num_choices=v)()),
    ("space", "distances", DIM_VALUES, lambda v: _generic(distances=[1, v])()),
    ("space", "dims", DIM_VALUES, lambda v: _generic(dims=_dims(v))()),
    ("space", "blocks", ("mlp", "Linear", ""), lambda v: _generic(blocks=["linear", v])()),
    ("space", "kind", ("foo",), lambda v: _generic(kind=v)()),
    ("space", "unknown key", ("x",), lambda v: _generic(num_choice=3)()),
    ("arch model", "dropout", PROB_VALUES + (1.0,), lambda v: _arch_model(v)),
]


def _rl(**options):
    return RLSearchCallback(shipped_space("rankitect"), **options)


def _arch_model(dropout):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "arch.json"
        path.write_text(shipped_space("generic").largest().to_json())
        return build_arch_model(SPEC, "generic", path, dropout=dropout)


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_bad_config_values(case):
    """Every listed bad value of every key (few enough to try them all, no sampling)."""
    entry, key, values, build = case
    for value in values:
        err = expect(
            f"config/{entry}",
            key,
            lambda v=value: build(v),
            lambda e: type(e) is ValueError and (key in str(e) or key == "unknown key"),
        )
        assert isinstance(err, ValueError), f"{entry} accepted {key}={value!r}"
        if key == "unknown key":
            assert re.search(r"unknown|unexpected", str(err)), err


@pytest.mark.parametrize(
    ("cli", "override", "group"),
    [("search", "method=foo", "method"), ("train", "trainer=foo", "trainer")],
)
def test_unknown_config_group_on_the_cli(cli, override, group):
    """Hydra's own composition error (what ``rankitect-search method=foo`` prints, composed here
    in-process to skip a subprocess start) names the group and the missing option."""
    with initialize_config_dir(str(cli_conf_dir()), version_base="1.3"):
        err = None
        try:
            compose(cli, overrides=[override])
        except MissingConfigException as e:
            err = e
    ok = err is not None and f"Could not find '{group}/foo'" in str(err)
    CENSUS[f"config/cli-{cli}", group, CLEAR if ok else CRASH] += 1
    assert ok, err
