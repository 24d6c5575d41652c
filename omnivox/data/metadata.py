"""Metadata tables of a dataset root: one CSV per stage directory, rows keyed by ``sha256``.

Layout (spec training.md 4.1): every stage directory ``<ROOT>/<dir>/`` holds a merged ``metadata.csv`` with
that stage's columns, plus ``new_records/part_*.csv`` files that running stages append to (one file per run
and rank, so concurrent ranks never share a file). Readers always see ``metadata.csv`` overlaid with every
part file in creation order (`load_table`), so a later stage can start before anything is merged; `merge_records`
folds the parts into ``metadata.csv`` (the reference's ``build_metadata.py``; pandas ``combine_first`` keyed
on ``sha256`` with new values winning) and deletes them.

Crash safety: ``metadata.csv`` is replaced atomically (temp file + rename). Part files are appended one
flushed row at a time; a process killed mid-row leaves a truncated last line, which readers drop (its asset
is then simply processed again). Merging is idempotent: re-applying a part over a table that already holds
it changes nothing, so a crash between writing ``metadata.csv`` and deleting the parts is harmless.

Values are strings as stored in the CSV (``""`` = missing); `as_bool` / `as_float` parse them. Booleans are
written ``True`` / ``False`` like pandas, so the reference's readers accept our tables.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

KEY = "sha256"
METADATA_FILE = "metadata.csv"
RECORDS_DIR = "new_records"

PathLike = Union[str, os.PathLike]
Row = Dict[str, str]
Table = Dict[str, Row]  # sha256 -> {column: value}, insertion-ordered


def format_value(value) -> str:
    """One cell as text: ``True``/``False`` for booleans, ``repr``-exact floats, ``""`` for None/NaN."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def as_bool(value: Optional[str]) -> bool:
    """A stored flag: ``True``/``true``/``1`` are true; anything else (including missing) is false."""
    return value is not None and value.strip().lower() in ("true", "1", "1.0", "yes")


def as_float(value: Optional[str]) -> Optional[float]:
    """A stored number, or None when missing or not a number."""
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _read_rows(path: Path) -> Tuple[List[str], List[Row]]:
    """Rows of one CSV file; rows with a wrong field count (a truncated last line) are dropped."""
    with open(path, newline="", encoding="utf-8") as handle:
        text = handle.read()
    if not text.endswith("\n"):
        # A writer was killed mid-row: the unterminated tail is incomplete by construction.
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        return [], []
    if KEY not in header:
        raise ValueError(f"{path}: no '{KEY}' column (header: {header[:8]})")
    rows = [dict(zip(header, fields)) for fields in reader if len(fields) == len(header)]
    return header, rows


def _overlay(table: Table, columns: List[str], header: Sequence[str], rows: Iterable[Row],
             empty_overwrites: bool = True) -> None:
    """Later rows win. Within one stage folder a row is a complete record, so its empty cells clear old
    values (a success clears an earlier error); across folders (``empty_overwrites=False``, pandas
    ``combine_first``) only non-empty values replace."""
    for name in header:
        if name not in columns:
            columns.append(name)
    for row in rows:
        sha = row.get(KEY, "")
        if not sha:
            continue
        target = table.setdefault(sha, {KEY: sha})
        for name, value in row.items():
            if value != "" or empty_overwrites or name not in target:
                target[name] = value


def _part_time(path: Path) -> Tuple[int, str]:
    # part_r<rank>_<time_ns>_<pid>.csv: order by creation time, not by rank, so that a later run (maybe with
    # another world size) wins over an earlier one; files named otherwise sort by modification time.
    fields = path.stem.split("_")
    if len(fields) == 4 and fields[2].isdigit():
        return int(fields[2]), path.name
    return path.stat().st_mtime_ns, path.name


def part_files(directory: PathLike) -> List[Path]:
    """The unmerged record files of a stage directory, oldest first."""
    folder = Path(directory) / RECORDS_DIR
    return sorted(folder.glob("part_*.csv"), key=_part_time) if folder.is_dir() else []


def has_table(directory: PathLike) -> bool:
    """Whether a folder holds a table (merged or only unmerged records)."""
    return (Path(directory) / METADATA_FILE).is_file() or bool(part_files(directory))


def load_table(directory: PathLike, include_parts: bool = True) -> Tuple[List[str], Table]:
    """``metadata.csv`` of a directory overlaid with its unmerged part files.

    Returns:
        (columns in first-seen order, table sha256 -> row). Both empty if the directory has no records.
    """
    directory = Path(directory)
    columns: List[str] = [KEY]
    table: Table = {}
    files = [directory / METADATA_FILE] if (directory / METADATA_FILE).is_file() else []
    if include_parts:
        files += part_files(directory)
    for file in files:
        header, rows = _read_rows(file)
        _overlay(table, columns, header, rows)
    return columns, table


def write_table(path: PathLike, columns: Sequence[str], table: Mapping[str, Mapping[str, str]]) -> None:
    """Write a table atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in table.values():
            writer.writerow([row.get(name, "") for name in columns])
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def merge_records(directory: PathLike) -> int:
    """Fold ``new_records/part_*.csv`` into ``metadata.csv`` and delete the parts; returns the row count."""
    directory = Path(directory)
    parts = part_files(directory)
    columns, table = load_table(directory)
    if parts or (directory / METADATA_FILE).is_file():
        write_table(directory / METADATA_FILE, columns, table)
    for part in parts:
        part.unlink(missing_ok=True)
    return len(table)


def union_tables(directories: Sequence[PathLike]) -> Tuple[List[str], Table]:
    """Rows of several stage directories joined on ``sha256`` (later directories fill and win)."""
    columns: List[str] = [KEY]
    table: Table = {}
    for directory in directories:
        header, rows = load_table(directory)
        _overlay(table, columns, header, rows.values(), empty_overwrites=False)
    return columns, table


class RecordWriter:
    """Appends one stage's rows to a fresh ``new_records/part_r<rank>_<time>.csv``, flushed row by row.

    One writer per process and rank; the file name is unique per run so a re-run never appends after a
    truncated line left by a killed run.
    """

    def __init__(self, directory: PathLike, columns: Sequence[str], rank: int = 0) -> None:
        if KEY not in columns:
            raise ValueError(f"RecordWriter: columns must include {KEY!r}, got {list(columns)}")
        folder = Path(directory) / RECORDS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.columns = list(columns)
        self.path = folder / f"part_r{rank:05d}_{time.time_ns()}_{os.getpid()}.csv"
        self._handle = open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(self.columns)
        self._handle.flush()
        self.count = 0

    def write(self, row: Mapping[str, object]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"RecordWriter: unknown columns {sorted(unknown)} (known: {self.columns})")
        self._writer.writerow([format_value(row.get(name)) for name in self.columns])
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()
            if self.count == 0:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
