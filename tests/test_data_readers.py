"""Readers on the real files (Frappe_x1, the Criteo sample) and on small generated files.
Expected values come from pandas reading the same files independently."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rankitect.data import (
    CategoricalCSVReader,
    CriteoReader,
    DataFileNotFoundError,
    DataFormatError,
)

DATA_ROOT = Path(
    os.environ.get("RANKITECT_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data")
)
FRAPPE = DATA_ROOT / "frappe_x1"
CRITEO_SAMPLE = DATA_ROOT / "criteo_sample" / "criteo_sample.csv"
needs_frappe = pytest.mark.skipif(
    not (FRAPPE / "train.csv").is_file(), reason=f"Frappe_x1 not found under {FRAPPE}"
)
needs_criteo = pytest.mark.skipif(
    not CRITEO_SAMPLE.is_file(), reason=f"Criteo sample not found at {CRITEO_SAMPLE}"
)
DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]


def _raw(path: Path) -> pd.DataFrame:
    """The file as strings, empty fields as ''."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# --------------------------------------------------------------------------- Frappe_x1


@pytest.fixture(scope="module")
def frappe():
    return CategoricalCSVReader(root=FRAPPE).load(), {
        s: _raw(FRAPPE / f)
        for s, f in [("train", "train.csv"), ("val", "valid.csv"), ("test", "test.csv")]
    }


@needs_frappe
def test_frappe_shapes_labels_and_spec(frappe):
    data, raw = frappe
    sizes = {s: len(data.splits[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 202027, "val": 57722, "test": 28860}  # the dataset README
    fields = list(raw["train"].columns[1:])
    assert len(fields) == 10 and data.spec.sparse_names == tuple(fields)
    assert data.spec.n_dense == 0
    for s, split in data.splits.items():
        assert split.dense.shape == (sizes[s], 0) and split.sparse.shape == (sizes[s], 10)
        assert split.sparse.dtype == torch.int64 and split.dense.dtype == torch.float32
        np.testing.assert_allclose(
            split.label.double().mean().item(), raw[s]["label"].astype(float).mean(), rtol=1e-12
        )
    # positives from the README
    assert int(data.splits["train"].label.sum()) == 67604
    assert int(data.splits["test"].label.sum()) == 9536
    # one OOV id + the train vocabulary per field
    assert data.spec.sparse_cardinalities == tuple(raw["train"][f].nunique() + 1 for f in fields)


@needs_frappe
def test_frappe_ids_are_a_consistent_remapping_with_oov(frappe):
    data, raw = frappe
    for j, f in enumerate(raw["train"].columns[1:]):
        train_values = set(raw["train"][f])
        seen_pairs = pd.concat(
            pd.DataFrame({"value": raw[s][f], "id": data.splits[s].sparse[:, j].numpy()})
            for s in ("train", "val", "test")
        )
        unseen = ~seen_pairs["value"].isin(train_values)
        assert (seen_pairs["id"][unseen] == 0).all()  # OOV
        known = seen_pairs[~unseen].drop_duplicates()
        # a bijection between train values and ids 1..n
        assert known["value"].is_unique and known["id"].is_unique
        assert set(known["id"]) == set(range(1, len(train_values) + 1))
    # the OOV case really occurs: a few validation users never appear in train
    val_users_unseen = ~raw["val"]["user"].isin(set(raw["train"]["user"]))
    assert val_users_unseen.sum() > 0
    assert (data.splits["val"].sparse[:, 0].numpy()[val_users_unseen.to_numpy()] == 0).all()


def test_categorical_csv_header_errors(tmp_path):
    (tmp_path / "train.csv").write_text("label,a,b\n1,x,y\n")
    (tmp_path / "valid.csv").write_text("label,a,c\n1,x,y\n")
    (tmp_path / "test.csv").write_text("label,a,b\n1,x,y\n")
    with pytest.raises(DataFormatError, match=r"valid\.csv, line 1: header .* differs"):
        CategoricalCSVReader(root=tmp_path).load()
    with pytest.raises(DataFormatError, match="no label column 'click'"):
        CategoricalCSVReader(root=tmp_path, label="click").load()
    with pytest.raises(DataFileNotFoundError, match="nothere.csv"):
        CategoricalCSVReader(root=tmp_path, test="nothere.csv").fingerprint()


def test_categorical_csv_min_count(tmp_path):
    (tmp_path / "train.csv").write_text("label,a\n1,x\n0,x\n1,y\n")
    for f in ("valid.csv", "test.csv"):
        (tmp_path / f).write_text("label,a\n1,x\n0,y\n1,z\n")
    data = CategoricalCSVReader(root=tmp_path, min_count=2).load()
    assert data.spec.sparse_cardinalities == (2,)  # OOV + "x"
    assert data.splits["val"].sparse[:, 0].tolist() == [1, 0, 0]


# --------------------------------------------------------------------------- Criteo


def _expected_dense(raw: pd.DataFrame, fill: float) -> np.ndarray:
    out = np.full((len(raw), 13), fill)
    for j, c in enumerate(DENSE):
        present = raw[c] != ""
        out[present.to_numpy(), j] = np.log1p(np.maximum(raw[c][present].astype(float), 0.0))
    return out


@needs_criteo
def test_criteo_sample_dense_transform_and_missing_ids():
    raw = _raw(CRITEO_SAMPLE)
    # every split is the whole file, so rows line up with pandas' reading
    reader = CriteoReader(
        train=CRITEO_SAMPLE, val=CRITEO_SAMPLE, test=CRITEO_SAMPLE, encoding="hash", dense_fill=-1.0
    )
    data = reader.load()
    split = data.splits["val"]
    assert data.spec.n_dense == 13 and data.spec.sparse_names == tuple(SPARSE)
    assert data.spec.dense_names == tuple(DENSE)
    np.testing.assert_array_equal(split.label.numpy(), raw["label"].astype(float))
    # the sample's quirks are really there
    assert (raw[DENSE] == "").to_numpy().any() and (raw[SPARSE] == "").to_numpy().any()
    negative = raw[DENSE].apply(lambda c: c.str.startswith("-")).to_numpy()
    assert negative.any()
    dense = split.dense.numpy()
    np.testing.assert_allclose(dense, _expected_dense(raw, -1.0), rtol=1e-6)
    assert (dense[negative] == 0.0).all()  # clipped to 0 before log1p
    assert ((raw[SPARSE] == "").to_numpy() == (split.sparse.numpy() == 0)).all()


@needs_criteo
@pytest.mark.parametrize("encoding", ["hash", "frequency"])
def test_criteo_ids_encode_values_consistently(tmp_path, encoding):
    raw = _raw(CRITEO_SAMPLE)
    # train = first 150 rows, val/test = the rest, so "seen in train" is known exactly
    parts = {"train": raw.iloc[:150], "val": raw.iloc[150:175], "test": raw.iloc[175:]}
    files = {}
    for s, df in parts.items():
        files[s] = tmp_path / f"{s}.csv"
        df.to_csv(files[s], index=False)
    data = CriteoReader(**files, encoding=encoding, hash_buckets=10**6, min_count=2).load()
    n_rare = n_frequent = 0
    for j, c in enumerate(SPARSE):
        counts = parts["train"][c].value_counts()
        frequent = set(counts.index[counts >= 2]) - {""}
        pairs = pd.concat(
            pd.DataFrame(
                {"value": parts[s][c].to_numpy(), "id": data.splits[s].sparse[:, j].numpy()}
            )
            for s in parts
        ).drop_duplicates()
        assert (pairs["id"][pairs["value"] == ""] == 0).all()
        assert pairs.groupby("value")["id"].nunique().max() == 1  # one id per value
        if encoding == "hash":
            assert data.spec.sparse_cardinalities[j] == 10**6 + 1
            assert pairs["id"].between(0, 10**6).all()
            # no collisions among so few values, whether or not train saw them
            assert pairs["id"].nunique() == len(pairs)
        else:
            assert data.spec.sparse_cardinalities[j] == len(frequent) + 2
            kept = pairs["value"].isin(frequent).to_numpy()
            rare = ~kept & (pairs["value"] != "").to_numpy()
            assert (pairs["id"][rare] == 1).all()  # rare in train or unseen: OOV
            assert pairs["id"][kept].is_unique and (pairs["id"][kept] >= 2).all()
            n_rare, n_frequent = n_rare + rare.sum(), n_frequent + kept.sum()
    if encoding == "frequency":  # both cases occur
        assert n_rare > 0 and n_frequent > 0


@needs_criteo
def test_criteo_unseen_values_hash_like_seen_ones(tmp_path):
    raw = _raw(CRITEO_SAMPLE)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    raw.iloc[:100].to_csv(a, index=False)
    raw.iloc[100:].to_csv(b, index=False)
    as_val = CriteoReader(train=a, val=b, test=b, encoding="hash").load().splits["val"]
    as_train = CriteoReader(train=b, val=a, test=a, encoding="hash").load().splits["train"]
    assert (as_val.sparse == as_train.sparse).all()


@needs_criteo
def test_criteo_random_split_of_one_file():
    kw = {"path": CRITEO_SAMPLE, "encoding": "hash"}
    data = CriteoReader(**kw).load()
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [160, 20, 20]
    whole = CriteoReader(
        train=CRITEO_SAMPLE, val=CRITEO_SAMPLE, test=CRITEO_SAMPLE, encoding="hash"
    )
    full = whole.load().splits["train"]

    def rows(split):
        return sorted(
            tuple(r)
            for r in np.hstack(
                [split.label[:, None].numpy(), split.dense.numpy(), split.sparse.numpy()]
            )
        )

    union = sum((rows(data.splits[s]) for s in ("train", "val", "test")), [])
    assert sorted(union) == rows(full)  # disjoint and complete
    again = CriteoReader(**kw).load()
    assert (again.splits["test"].sparse == data.splits["test"].sparse).all()
    other = CriteoReader(**kw, split_seed=1).load()
    assert not (other.splits["test"].sparse == data.splits["test"].sparse).all()
    with pytest.raises(DataFormatError, match="leaves"):
        CriteoReader(path=CRITEO_SAMPLE, split=(0.999, 0.001, 0.0)).load()


@needs_criteo
def test_criteo_tsv_without_header_matches_the_csv(tmp_path):
    lines = CRITEO_SAMPLE.read_text().splitlines()[1:]
    tsv = tmp_path / "day_0.tsv"
    tsv.write_text("".join(line.replace(",", "\t") + "\n" for line in lines))
    from_csv = CriteoReader(path=CRITEO_SAMPLE, encoding="hash").load()
    from_tsv = CriteoReader(path=tsv, encoding="hash").load()
    for s in ("train", "val", "test"):
        for a in ("dense", "sparse", "label"):
            assert (getattr(from_csv.splits[s], a) == getattr(from_tsv.splits[s], a)).all()
    assert from_tsv.spec == from_csv.spec


def test_criteo_small_generated_tsv(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        ints = ["" if rng.random() < 0.3 else str(int(rng.integers(-3, 1000))) for _ in range(13)]
        cats = [
            "" if rng.random() < 0.3 else f"{int(rng.integers(0, 2**32)):08x}" for _ in range(26)
        ]
        rows.append("\t".join([str(i % 2), *ints, *cats]))
    path = tmp_path / "train.txt"
    path.write_text("\n".join(rows) + "\n")
    data = CriteoReader(train=path, val=path, test=path, log1p=False, encoding="hash").load()
    got = data.splits["train"].dense.numpy()
    fields = [r.split("\t") for r in rows]
    want = [[max(float(v), 0.0) if v else 0.0 for v in f[1:14]] for f in fields]
    np.testing.assert_array_equal(got, want)
    assert data.splits["train"].label.tolist() == [float(i % 2) for i in range(30)]


def test_criteo_bad_rows(tmp_path, caplog):
    good = "\t".join(["1"] + ["5"] * 13 + ["abcdef01"] * 26)
    bad_int = "\t".join(["0"] + ["5", "x7"] + ["5"] * 11 + ["abcdef01"] * 26)
    short = "\t".join(["0"] + ["5"] * 13 + ["abcdef01"] * 25)
    path = tmp_path / "c.tsv"
    path.write_text("\n".join([good, bad_int, good, short, good] * 4) + "\n")
    with pytest.raises(DataFormatError, match=r"c\.tsv, line 2, column 'I2': expected a number"):
        CriteoReader(path=path).load()
    reader = CriteoReader(path=path, encoding="hash")
    data = reader.load(on_bad_row="skip")
    assert reader.bad_rows == {str(path): 8} and data.bad_rows == {str(path): 8}
    assert sum(len(s) for s in data.splits.values()) == 12
    assert "skipped 8 bad row(s)" in caplog.text


def test_criteo_header_and_argument_errors(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("label,I1,C1\n1,2,abc\n")
    with pytest.raises(DataFormatError, match="line 1: expected a header of 40 fields, found 3"):
        CriteoReader(path=path).load()
    with pytest.raises(ValueError, match="either `path` or all of"):
        CriteoReader(path=path, train=path)
    with pytest.raises(ValueError, match="either `path` or all of"):
        CriteoReader(train=path, val=path)
    with pytest.raises(ValueError, match="split must be"):
        CriteoReader(path=path, split=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="encoding"):
        CriteoReader(path=path, encoding="onehot")
