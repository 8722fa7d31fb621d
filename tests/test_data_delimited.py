"""The vectorised delimited-text parser: values against Python's own parsing, line endings,
block boundaries, and every bad-input case (file + line + column in the error)."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankitect.data import DataFileNotFoundError, DataFormatError
from rankitect.data.delimited import (
    CATEGORICAL,
    LABEL,
    NUMERIC,
    read_table,
    read_table_parts,
)

KINDS = [LABEL, NUMERIC, NUMERIC, CATEGORICAL, CATEGORICAL]
NAMES = ["label", "I1", "I2", "C1", "C2"]


def _write(path, lines, end="\n", final_end=True):
    text = end.join(lines) + (end if final_end else "")
    path.write_bytes(text.encode())
    return path


def _key(s: str) -> int:
    """Reference key of a short categorical value: its bytes as a little-endian integer."""
    return int.from_bytes(s.encode(), "little")


def test_values_match_python_parsing(tmp_path):
    rows = [
        "1,12,-3,05db9164,",
        "0,,260.0,,abc",
        "1,0,+7,a,12345678",
        "0,123456789012,.5,x y,9",
    ]
    path = _write(tmp_path / "t.csv", rows)
    t = read_table(path, KINDS, NAMES, ",", header=False)
    fields = [r.split(",") for r in rows]
    np.testing.assert_array_equal(t.label, [float(f[0]) for f in fields])
    expected_num = [[float(v) if v else np.nan for v in f[1:3]] for f in fields]
    np.testing.assert_array_equal(t.numeric, expected_num)
    np.testing.assert_array_equal(t.keys, [[_key(v) for v in f[3:5]] for f in fields])
    assert t.label.dtype == np.float32 and t.keys.dtype == np.uint64 and t.bad_rows == 0


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["0", "1"]),
            st.one_of(
                st.just(""),
                st.integers(-(10**12), 10**12).map(str),
                st.decimals(-1e6, 1e6, places=3, allow_nan=False).map(str),
            ),
            # text files hold no NUL bytes (keys pad short values with them)
            st.text(st.characters(codec="ascii", exclude_characters=",\r\n\x00"), max_size=20),
        ),
        min_size=1,
        max_size=30,
    ),
    crlf=st.booleans(),
)
def test_random_tables_round_trip(tmp_path, rows, crlf):
    path = _write(tmp_path / "r.csv", [",".join(r) for r in rows], "\r\n" if crlf else "\n")
    kinds, names = [LABEL, NUMERIC, CATEGORICAL], ["label", "x", "c"]
    # a tiny block size forces lines across many blocks
    t = read_table_parts(path, kinds, names, ",", False, block_bytes=64)[0]
    np.testing.assert_array_equal(t.label, [float(r[0]) for r in rows])
    np.testing.assert_allclose(
        t.numeric[:, 0], [float(r[1]) if r[1] else np.nan for r in rows], rtol=1e-12
    )
    keys = t.keys[:, 0]
    for r, k in zip(rows, keys, strict=True):
        if len(r[2]) <= 8:
            assert k == _key(r[2])
        else:
            assert k != 0
    # long values are hashed: equal strings, equal keys; different strings, different keys
    by_value: dict[str, set[int]] = {}
    for r, k in zip(rows, keys, strict=True):
        by_value.setdefault(r[2], set()).add(int(k))
    assert all(len(ks) == 1 for ks in by_value.values())
    assert len({next(iter(ks)) for ks in by_value.values()}) == len(by_value)


def test_line_ends_blank_lines_and_missing_final_newline(tmp_path):
    # CRLF and LF line ends mixed, an empty line, a line holding only CR, no final line end
    lines = ["1,1,2,a,b\r", "", "0,3,4,c,d", "\r", "1,5,6,e,f\r\n1,7,8,g,h"]
    path = _write(tmp_path / "t.csv", lines, final_end=False)
    t = read_table(path, KINDS, NAMES, ",", header=False)
    np.testing.assert_array_equal(t.label, [1, 0, 1, 1])
    np.testing.assert_array_equal(t.numeric, [[1, 2], [3, 4], [5, 6], [7, 8]])
    np.testing.assert_array_equal(t.keys[:, 1], [_key(c) for c in "bdfh"])  # no stray CR


def test_header_is_skipped_and_tab_separator(tmp_path):
    path = _write(tmp_path / "t.tsv", ["\t".join(NAMES), "1\t2\t3\tx\ty"])
    t = read_table(path, KINDS, NAMES, "\t", header=True)
    np.testing.assert_array_equal(t.numeric, [[2, 3]])


def test_partition_keeps_file_order(tmp_path):
    path = _write(tmp_path / "t.csv", [f"{i % 2},{i},0,a,b" for i in range(10)])
    which = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    parts = read_table_parts(path, KINDS, NAMES, ",", False, partition=lambda n: which[:n])
    for g, part in enumerate(parts):
        np.testing.assert_array_equal(part.numeric[:, 0], np.flatnonzero(which == g))


BAD_CASES = [
    # (bad line, expected line number, column, message fragment)
    ("1,2,3,a", 3, None, "expected 5 fields, found 4"),
    ("1,2,3,a,b,c", 3, None, "expected 5 fields, found 6"),
    ("1,2,abc,a,b", 3, "I2", "expected a number, got 'abc'"),
    ("1,1e5,1,a,b", 3, "I1", "expected a number, got '1e5'"),
    ("1,--1,1,a,b", 3, "I1", "expected a number, got '--1'"),
    ("2,1,1,a,b", 3, "label", "label must be 0 or 1, got '2'"),
    (",1,1,a,b", 3, "label", "label must be 0 or 1, got ''"),
    ("yes,1,1,a,b", 3, "label", "label must be 0 or 1, got 'yes'"),
]


@pytest.mark.parametrize(("bad", "line", "column", "fragment"), BAD_CASES)
def test_bad_row_raises_with_file_line_and_column(tmp_path, bad, line, column, fragment):
    path = _write(tmp_path / "bad.csv", [",".join(NAMES), "0,1,2,a,b", bad, "1,3,4,c,d", bad])
    with pytest.raises(DataFormatError) as err:
        read_table(path, KINDS, NAMES, ",", header=True)
    e = err.value
    assert isinstance(e, ValueError)
    assert (e.path, e.line, e.column) == (str(path), line, column)
    msg = str(e)
    assert str(path) in msg and f"line {line}" in msg and fragment in msg
    if column:
        assert repr(column) in msg


@pytest.mark.parametrize(("bad", "line", "column", "fragment"), BAD_CASES)
def test_bad_rows_are_skipped_counted_and_reported(tmp_path, caplog, bad, line, column, fragment):
    path = _write(tmp_path / "bad.csv", [",".join(NAMES), "0,1,2,a,b", bad, "1,3,4,c,d", bad])
    with caplog.at_level(logging.WARNING, logger="rankitect.data.delimited"):
        t = read_table(path, KINDS, NAMES, ",", header=True, on_bad_row="skip")
    assert t.bad_rows == 2
    np.testing.assert_array_equal(t.numeric, [[1, 2], [3, 4]])
    [record] = caplog.records
    assert "skipped 2 bad row(s)" in record.getMessage()
    assert f"line {line}" in record.getMessage() and fragment in record.getMessage()


def test_first_bad_row_is_reported_across_blocks(tmp_path):
    good = "0,1,2,a,b"
    lines = [good] * 50 + ["0,1,x,a,b"] + [good] * 10 + ["0,1"]
    path = _write(tmp_path / "t.csv", lines)
    with pytest.raises(DataFormatError) as err:
        read_table_parts(path, KINDS, NAMES, ",", False, block_bytes=64)
    assert err.value.line == 51 and err.value.column == "I2"
    t = read_table_parts(path, KINDS, NAMES, ",", False, "skip", block_bytes=64)[0]
    assert (len(t), t.bad_rows) == (60, 2)


def test_long_line_grows_the_block(tmp_path):
    long_value = "v" * 300
    path = _write(tmp_path / "t.csv", [f"1,1,2,{long_value},b", "0,3,4,c,d"])
    t = read_table_parts(path, KINDS, NAMES, ",", False, block_bytes=32)[0]
    assert len(t) == 2 and t.keys[0, 0] not in (0, t.keys[1, 0])


def test_missing_empty_and_header_only_files(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="file not found") as err:
        read_table(tmp_path / "nope.csv", KINDS, NAMES, ",", header=False)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    assert str(tmp_path / "nope.csv") in str(err.value)

    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataFormatError, match="file is empty") as err:
        read_table(empty, KINDS, NAMES, ",", header=False)
    assert str(empty) in str(err.value)

    header_only = _write(tmp_path / "h.csv", [",".join(NAMES)])
    with pytest.raises(DataFormatError, match="no data rows"):
        read_table(header_only, KINDS, NAMES, ",", header=True)

    all_bad = _write(tmp_path / "b.csv", ["5,1,1,a,b"])
    with pytest.raises(DataFormatError, match=r"no data rows \(1 bad rows skipped\)"):
        read_table(all_bad, KINDS, NAMES, ",", header=False, on_bad_row="skip")


def test_error_survives_pickling():
    e = DataFormatError("/x/y.csv", "expected a number, got 'a'", 7, "I3")
    e2 = pickle.loads(pickle.dumps(e))
    assert (type(e2), str(e2), e2.line, e2.column) == (DataFormatError, str(e), 7, "I3")


def test_invalid_arguments():
    with pytest.raises(ValueError, match="on_bad_row"):
        read_table("x", KINDS, NAMES, ",", False, on_bad_row="ignore")
    with pytest.raises(ValueError, match="exactly one of kind 'label'"):
        read_table("x", [NUMERIC, NUMERIC], ["a", "b"], ",", False)
    with pytest.raises(ValueError, match="separator"):
        read_table("x", KINDS, NAMES, ",,", False)
