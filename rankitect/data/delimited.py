"""Vectorised parsing of delimited text (CSV / TSV without quoting) into numpy arrays.

Why not ``pandas.read_csv``: it builds one Python string per categorical cell (26 per Criteo
row), which alone costs more than this whole parse. Here numpy finds every delimiter of a
block of bytes at once, fields are decoded in bulk from their byte offsets, and the offsets give
exact line numbers for error messages for free.

Each column has a kind:

* ``label``: ``0`` or ``1`` (any number equal to 0 or 1, e.g. ``1.0``, is accepted);
* ``numeric``: a decimal number ``[+-]digits[.digits]``; an empty field is missing (NaN);
* ``categorical``: any bytes, turned into a uint64 *key*: the raw bytes (little-endian) for
  values of up to 8 bytes, which covers Criteo's 8-hex-digit hashes and small integer ids
  exactly, and a 64-bit hash of the bytes for longer values. An empty field has key 0
  (values must not contain NUL bytes, which text files do not).

Quoted fields are not supported (neither Criteo nor the BARS CSVs use quoting). Lines may end
in LF or CRLF; blank lines are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankitect.data.errors import DataFileNotFoundError, DataFormatError
from rankitect.data.source import OnBadRow, check_on_bad_row

log = logging.getLogger(__name__)

LABEL, NUMERIC, CATEGORICAL = "label", "numeric", "categorical"
KINDS = (LABEL, NUMERIC, CATEGORICAL)

_NL, _CR = 10, 13
_PAD = 8  # bytes readable past a block's end, for 8-byte loads at any field start
_U64 = np.uint64
_ONE = _U64(1)
_ASCII_ZEROS = _U64(0x3030303030303030)
_HIGH_NIBBLES = _U64(0xF0F0F0F0F0F0F0F0)
_SIXES = _U64(0x0606060606060606)


def _low_bytes(n: np.ndarray) -> np.ndarray:
    """Masks of the ``n`` low bytes of a word; numpy defines ``1 << 64`` as 0, so n >= 8 gives
    all ones. (Arithmetic, because a lookup-table gather is several times slower here.)"""
    return (_ONE << (n.astype(_U64) * _U64(8))) - _ONE


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a fast, well-mixing bijection of uint64 (wraps on overflow)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


@dataclass
class Table:
    """Parsed rows: ``label`` float32 ``(n,)``, ``numeric`` float64 ``(n, n_numeric)`` (NaN where
    empty), ``keys`` uint64 ``(n, n_categorical)`` (0 where empty) -- or what `read_table`'s
    ``numeric_fn`` / ``keys_fn`` made of them -- and the number of bad rows skipped under
    ``on_bad_row="skip"``."""

    label: np.ndarray
    numeric: np.ndarray
    keys: np.ndarray
    bad_rows: int

    def __len__(self) -> int:
        return int(self.label.shape[0])


def read_first_line(path: str | Path) -> str:
    """The first line of ``path`` without its line end; clear errors for missing or empty files."""
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(path, "file not found")
    with open(path, "rb") as f:
        line = f.readline()
    if not line:
        raise DataFormatError(path, "file is empty")
    return line.rstrip(b"\r\n").decode("utf-8", errors="replace")


def complete_lines(buf: np.ndarray, filled: int, eof: bool) -> tuple[np.ndarray, int, int]:
    """``(buf, filled, cut)``: the complete lines of ``buf[:filled]`` end at ``cut``. At the end of
    the file a last line without a line end gets one; ``cut == 0``: no complete line yet (``buf``
    is doubled when one line fills it)."""
    if eof:
        if buf[filled - 1] != _NL:
            buf[filled] = _NL
            filled += 1
        return buf, filled, filled
    cut = _last_newline(buf, filled) + 1
    if cut == 0 and filled == len(buf) - _PAD:
        buf = np.concatenate([buf, np.empty(len(buf), np.uint8)])
    return buf, filled, cut


def read_table(
    path: str | Path,
    kinds: Sequence[str],
    names: Sequence[str],
    sep: str,
    header: bool,
    on_bad_row: OnBadRow = "error",
    numeric_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    keys_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Table:
    """`read_table_parts` into a single table."""
    return read_table_parts(
        path, kinds, names, sep, header, on_bad_row, numeric_fn, keys_fn, partition=None
    )[0]


def read_table_parts(
    path: str | Path,
    kinds: Sequence[str],
    names: Sequence[str],
    sep: str,
    header: bool,
    on_bad_row: OnBadRow = "error",
    numeric_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    keys_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    partition: Callable[[int], np.ndarray] | None = None,
    block_bytes: int = 1 << 20,  # small blocks keep temporaries in CPU cache (measured fastest)
) -> list[Table]:
    """Parses ``path`` whose rows have one field per entry of ``kinds`` (named ``names``).

    ``partition(n)``, if given, returns the part index (0..k-1) of each of the ``n`` parsed
    rows; the result is then one table per part, rows in file order (this saves a full copy
    over splitting a parsed table). Without it the result is one table.

    With ``header`` the first line is skipped (the caller checks it, see `read_first_line`). A
    bad row (wrong number of fields, non-numeric number, label not 0/1) raises
    `DataFormatError` naming the file, the 1-based line and the column, or with
    ``on_bad_row="skip"`` is dropped, counted and reported in one warning at the end.

    ``numeric_fn`` and ``keys_fn``, if given, transform each block's numeric ``(b, n_numeric)``
    and key ``(b, n_categorical)`` arrays row by row (e.g. ``log1p``, hashing) while the block
    is still in CPU cache, which is much faster than a pass over the whole result.
    """
    check_on_bad_row(on_bad_row)
    if len(kinds) != len(names) or len(kinds) < 2 or list(kinds).count(LABEL) != 1:
        raise ValueError("read_table needs >= 2 named columns, exactly one of kind 'label'")
    if unknown := set(kinds) - set(KINDS):
        raise ValueError(f"read_table: unknown column kinds {sorted(unknown)}")
    if len(sep) != 1 or sep in "\r\n":
        raise ValueError(f"read_table: separator must be one character, got {sep!r}")
    path = Path(path)
    read_first_line(path)  # missing / empty file errors
    parser = _BlockParser(path, kinds, names, ord(sep), on_bad_row, header, numeric_fn, keys_fn)
    buf = np.empty(block_bytes + _PAD, np.uint8)
    filled = 0
    with open(path, "rb") as f:
        while True:
            n_read = f.readinto(memoryview(buf)[filled : len(buf) - _PAD])
            filled += n_read
            eof = n_read == 0
            if eof and filled == 0:
                break
            buf, filled, cut = complete_lines(buf, filled, eof)
            if cut == 0:
                continue
            parser.feed(buf, cut)
            rest = filled - cut
            buf[:rest] = buf[cut:filled]
            filled = rest
            if eof:
                break
    return parser.result(partition)


def _last_newline(buf: np.ndarray, end: int) -> int:
    """Index of the last LF in ``buf[:end]``, or -1; searches backwards in growing windows."""
    width = 1 << 16
    while True:
        lo = max(0, end - width)
        hits = np.flatnonzero(buf[lo:end] == _NL)
        if hits.size:
            return lo + int(hits[-1])
        if lo == 0:
            return -1
        end, width = lo, width * 2


class _BlockParser:
    """Parses blocks of whole lines, keeping line numbers and bad-row bookkeeping across them."""

    def __init__(
        self,
        path: Path,
        kinds: Sequence[str],
        names: Sequence[str],
        sep: int,
        on_bad_row: OnBadRow,
        skip_first_line: bool,
        numeric_fn: Callable[[np.ndarray], np.ndarray] | None,
        keys_fn: Callable[[np.ndarray], np.ndarray] | None,
    ) -> None:
        self.path, self.names, self.sep, self.on_bad_row = path, list(names), sep, on_bad_row
        self.n_fields = len(kinds)
        kinds = list(kinds)
        self.label_col = kinds.index(LABEL)
        self.numeric_cols = np.array([i for i, k in enumerate(kinds) if k == NUMERIC], np.int64)
        self.cat_cols = np.array([i for i, k in enumerate(kinds) if k == CATEGORICAL], np.int64)
        self.skip_first_line = skip_first_line
        self.numeric_fn, self.keys_fn = numeric_fn, keys_fn
        self.lines_before = 0  # lines (of any kind) in the blocks already parsed
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.bad_rows = 0
        self.first_bad: tuple[int, str | None, str] | None = None

    def feed(self, buf: np.ndarray, stop: int) -> None:
        """Parses ``buf[:stop]`` (whole lines, ending in LF; ``_PAD`` readable bytes follow)."""
        start = 0
        if self.skip_first_line:
            start = int(np.argmax(buf[:stop] == _NL)) + 1
            self.skip_first_line = False
            self.lines_before = 1
        data = buf[start:stop]
        # words[i] is the 8 bytes starting at data[i] (unaligned loads, numpy handles them)
        words = np.ndarray((stop - start,), dtype="<u8", buffer=buf, offset=start, strides=(1,))
        is_nl = data == _NL
        is_delim = data == self.sep
        is_delim |= is_nl
        pos = np.flatnonzero(is_delim)
        n_lines = int(np.count_nonzero(is_nl))
        nf = self.n_fields
        bad: list[tuple[int, str | None, str]] = []  # (line index in block, column, reason)
        n_bad = 0
        if pos.size == nf * n_lines and bool(np.all(data[pos[nf - 1 :: nf]] == _NL)):
            # Fast path: every line has exactly nf fields.
            ends = pos.reshape(n_lines, nf)
            line_idx = np.arange(n_lines)
            row_start = np.empty(n_lines, np.int64)
            row_start[:1] = 0
            row_start[1:] = ends[:-1, -1] + 1
        else:
            at_nl = data[pos] == _NL
            line_of = np.cumsum(at_nl) - at_nl
            counts = np.bincount(line_of, minlength=n_lines)
            line_end = pos[at_nl]
            line_start = np.concatenate([[0], line_end[:-1] + 1])
            length = line_end - line_start
            blank = (length == 0) | ((length == 1) & (data[line_start] == _CR))
            good = counts == nf
            wrong = np.flatnonzero(~good & ~blank)
            n_bad += wrong.size
            if wrong.size:
                i = int(wrong[0])
                bad.append((i, None, f"expected {nf} fields, found {int(counts[i])}"))
            pos = pos[good[line_of]]
            line_idx = np.flatnonzero(good)
            ends = pos.reshape(line_idx.size, nf)
            row_start = line_start[line_idx]
        starts = np.empty_like(ends)
        starts[:, 0] = row_start
        starts[:, 1:] = ends[:, :-1] + 1
        lens = ends - starts
        if lens.size:
            lens[:, -1] -= data[ends[:, -1] - 1] == _CR  # CRLF line ends

        lc = self.label_col
        label, label_ok = _parse_labels(data, starts[:, lc], lens[:, lc])
        numeric, numeric_ok = _parse_numbers(
            data, words, np.take(starts, self.numeric_cols, 1), np.take(lens, self.numeric_cols, 1)
        )
        cat = self.cat_cols
        keys = _field_keys(words, np.take(starts, cat, 1), np.take(lens, cat, 1))
        row_ok = label_ok & numeric_ok.all(axis=1)
        if not row_ok.all():
            bad_rows = np.flatnonzero(~row_ok)
            n_bad += bad_rows.size
            r = int(bad_rows[0])
            if not label_ok[r]:
                col, reason = lc, "label must be 0 or 1"
            else:
                col = int(self.numeric_cols[np.argmin(numeric_ok[r])])
                reason = "expected a number"
            token = bytes(data[starts[r, col] : starts[r, col] + lens[r, col]])
            got = token.decode(errors="replace")
            bad.append((int(line_idx[r]), self.names[col], f"{reason}, got {got!r}"))
            label, numeric, keys = label[row_ok], numeric[row_ok], keys[row_ok]
        if bad:
            first = min(bad, key=lambda b: b[0])
            first_bad = (self.lines_before + first[0] + 1, first[1], first[2])
            if self.on_bad_row == "error":
                raise DataFormatError(self.path, first_bad[2], first_bad[0], first_bad[1])
            self.first_bad = self.first_bad or first_bad
            self.bad_rows += n_bad
        if self.numeric_fn is not None:
            numeric = self.numeric_fn(numeric)
        if self.keys_fn is not None:
            keys = self.keys_fn(keys)
        self.parts.append((label, numeric, keys))
        self.lines_before += n_lines

    def result(self, partition: Callable[[int], np.ndarray] | None) -> list[Table]:
        n = sum(len(p[0]) for p in self.parts)
        if n == 0:
            skipped = f" ({self.bad_rows} bad rows skipped)" if self.bad_rows else ""
            raise DataFormatError(self.path, f"no data rows{skipped}")
        if self.first_bad is not None:
            line, col, reason = self.first_bad
            where = f"line {line}" + (f", column {col!r}" if col else "")
            log.warning(
                "%s: skipped %d bad row(s) (on_bad_row='skip'); first at %s: %s",
                self.path,
                self.bad_rows,
                where,
                reason,
            )
        groups = [self.parts]
        if partition is not None:
            which = np.asarray(partition(n))
            ends = np.cumsum([len(p[0]) for p in self.parts])
            blocks = [(which[e - len(p[0]) : e], p) for e, p in zip(ends, self.parts, strict=True)]
            n_groups = int(which.max()) + 1
            groups = [[tuple(a[w == g] for a in p) for w, p in blocks] for g in range(n_groups)]
        return [
            Table(
                label=np.concatenate([p[0] for p in parts]),
                numeric=np.concatenate([p[1] for p in parts]),
                keys=np.concatenate([p[2] for p in parts]),
                bad_rows=self.bad_rows,
            )
            for parts in groups
        ]


def _field_keys(words: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """uint64 keys of categorical fields (see the module docstring); 0 for empty fields."""
    keys = words[starts] & _low_bytes(lens)
    long = lens > 8
    if long.any():
        s, n = starts[long], lens[long]
        h = mix64(words[s])
        for k in range(1, int(n.max() + 7) // 8):
            rest = n - 8 * k
            more = rest > 0
            w = words[np.where(more, s + 8 * k, s)] & _low_bytes(np.maximum(rest, 0))
            h = np.where(more, mix64(h ^ w), h)
        h[h == 0] = 1  # 0 means "empty"
        keys[long] = h
    return keys


def _parse_labels(
    data: np.ndarray, starts: np.ndarray, lens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    first = data[starts]
    ok = (lens == 1) & ((first == ord("0")) | (first == ord("1")))
    label = (first == ord("1")).astype(np.float32)
    other = np.flatnonzero(~ok & (lens > 0))  # e.g. "1.0"; anything else is bad
    if other.size:
        value, parsed = _parse_decimal(data, starts[other], lens[other])
        ok[other] = parsed & ((value == 0.0) | (value == 1.0))
        label[other] = value
    return label, ok


def _parse_numbers(
    data: np.ndarray, words: np.ndarray, starts: np.ndarray, lens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Decimal numbers of fields ``(n, k)`` as float64 (NaN where empty) and a validity mask."""
    # SWAR: plain integers of 1..8 digits, the common case, parsed in a few word operations.
    # The k digits are shifted to the top k bytes of the word; the bytes below become ASCII '0'
    # (leading zeros). Empty and longer fields give garbage here and are masked out by `fast`.
    shift = (_U64(8) - np.minimum(lens, 8).astype(_U64)) * _U64(8)
    t = (words[starts] << shift) | (_ASCII_ZEROS & ((_ONE << shift) - _ONE))
    # every byte in 0x30..0x39: high nibble 3, and still 3 after adding 6 to the byte
    digits = (t & _HIGH_NIBBLES) == _ASCII_ZEROS
    digits &= ((t + _SIXES) & _HIGH_NIBBLES) == _ASCII_ZEROS
    fast = digits & (lens > 0) & (lens <= 8)
    t &= _U64(0x0F0F0F0F0F0F0F0F)
    t = ((t * _U64(2561)) >> _U64(8)) & _U64(0x00FF00FF00FF00FF)
    t = ((t * _U64(6553601)) >> _U64(16)) & _U64(0x0000FFFF0000FFFF)
    t = (t * _U64(42949672960001)) >> _U64(32)
    values = np.where(fast, t.astype(np.float64), np.nan)
    ok = fast | (lens == 0)
    other = ~ok  # signs, decimal points, long numbers and junk
    if other.any():
        v, parsed = _parse_decimal(data, starts[other], lens[other])
        values[other] = v
        ok[other] = parsed
    return values, ok


def _parse_decimal(
    data: np.ndarray, starts: np.ndarray, lens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """General ``[+-]digits[.digits]`` parser over non-empty fields, one character position at a
    time across all fields; returns float64 values and a validity mask."""
    m = starts.size
    whole = np.zeros(m)
    frac = np.zeros(m)
    frac_digits = np.zeros(m)
    n_digits = np.zeros(m, np.int64)
    seen_point = np.zeros(m, bool)
    ok = np.ones(m, bool)
    negative = np.zeros(m, bool)
    for j in range(int(lens.max())):
        active = lens > j
        ch = data[starts + np.minimum(j, lens - 1)]
        digit = (ch >= ord("0")) & (ch <= ord("9"))
        point = (ch == ord(".")) & ~seen_point
        sign = (ch == ord("-")) | (ch == ord("+")) if j == 0 else np.zeros(m, bool)
        ok &= ~active | digit | point | sign
        d = ch.astype(np.float64) - ord("0")
        in_whole = active & digit & ~seen_point
        # digits past the 18th after the point cannot change a float64; counting them would
        # overflow 10**frac_digits (inf / inf = NaN, i.e. silently "missing")
        in_frac = active & digit & seen_point & (frac_digits < 18)
        with np.errstate(over="ignore"):  # a too long number becomes inf, rejected below
            whole = np.where(in_whole, whole * 10 + d, whole)
        frac = np.where(in_frac, frac * 10 + d, frac)
        frac_digits += in_frac
        n_digits += active & digit
        seen_point |= active & point
        if j == 0:
            negative = ch == ord("-")
    value = whole + frac / 10.0**frac_digits
    # more digits than float64 holds (inf) is not a number to train on: a bad field
    return np.where(negative, -value, value), ok & (n_digits > 0) & np.isfinite(value)
