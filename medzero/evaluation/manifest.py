"""Labelled manifests: which files, and what a person said about each.

A manifest is a CSV (or TSV) file with a header, or a JSONL file with one object per line. Columns:

- ``path`` (required): the file, relative to the manifest's own folder (or absolute);
- one column per task label, named by the label id, saying whether the finding is present:
  ``1``/``true``/``yes`` or ``0``/``false``/``no`` (any case); an **empty** cell, ``null``, ``na``,
  ``n/a`` or ``?`` means *not known* and leaves the row out of that label's statistics only.
  Uncertain labels (``-1``, as CheXpert writes them) are refused: map them to 0 or 1, or leave
  them empty. Columns may cover only some of the task's labels;
- ``label`` (multiclass tasks, instead of label columns): the id of the row's one true class;
- ``verdict`` (tasks with verdicts, e.g. voice quality): the verdict a person gave, one of the
  task's verdict ids (``accept``, ``review``, ``re-record``), empty if not judged.

Any other column is an error, so a typo in a label id cannot silently drop a label. Every problem
is one :class:`BadInputError` line that names the manifest, the line (CSV: the header is line 1)
and what is wrong.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.errors import BadInputError
from ..tasks.schema import Task

__all__ = ["Manifest", "ManifestRow", "read_manifest", "parse_value", "file_sha256"]

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}
_UNKNOWN = {"", "na", "n/a", "?", "null", "none"}
_RESERVED = ("path", "verdict", "label")


@dataclass(frozen=True)
class ManifestRow:
    line: int  #: line of the manifest it came from (CSV: the header is line 1)
    path: str  #: as written in the manifest
    file: Path  #: resolved against the manifest's folder
    labels: dict[str, int | None]  #: label id -> 1 / 0 / None (not known)
    verdict: str | None = None


@dataclass
class Manifest:
    source: Path
    rows: list[ManifestRow]
    #: The labels the manifest says something about, in the task's order.
    label_ids: list[str]
    has_verdict: bool
    #: sha256 of the manifest file's bytes.
    sha256: str
    _file_hashes: dict[str, str] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def truth(self, label_id: str) -> np.ndarray:
        """Float array, one per row: 1.0, 0.0 or ``nan`` (not known)."""
        return np.array([np.nan if r.labels.get(label_id) is None else float(r.labels[label_id]) for r in self.rows])

    def file_sha256(self, row: ManifestRow) -> str:
        if row.path not in self._file_hashes:
            self._file_hashes[row.path] = file_sha256(row.file)
        return self._file_hashes[row.path]

    @cached_property
    def data_hash(self) -> str:
        """sha256 over the rows sorted by path: (path as written, file sha256, labels, verdict).

        Moving the folder keeps the hash; changing a file's bytes or any label changes it."""
        records = sorted(
            [row.path, self.file_sha256(row), {k: row.labels.get(k) for k in self.label_ids}, row.verdict]
            for row in self.rows
        )
        blob = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_sha256(path: "str | os.PathLike") -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_value(value: Any) -> int | None:
    """1, 0 or None (not known); ``ValueError`` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value in (0, 1):
            return int(value)
        raise ValueError(str(value))
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    if text in _UNKNOWN:
        return None
    raise ValueError(str(value).strip())


def read_manifest(path: "str | os.PathLike", task: Task) -> Manifest:
    """Read and check a manifest against ``task``; a problem is one :class:`BadInputError` line."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"manifest not found: {source}") from None
    except OSError as exc:
        raise BadInputError(f"cannot read manifest {source}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInputError(f"{source}: not UTF-8 text; save the manifest as UTF-8 CSV or JSONL") from None
    records = _jsonl_records(source, text) if _is_jsonl(source, text) else _csv_records(source, text)
    return _check(source, records, task, hashlib.sha256(data).hexdigest())


def _is_jsonl(source: Path, text: str) -> bool:
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return True
    if suffix in (".csv", ".tsv", ".txt"):
        return False
    return text.lstrip().startswith("{")


def _csv_records(source: Path, text: str) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    delimiter = "\t" if source.suffix.lower() == ".tsv" else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise BadInputError(f"{source}: empty manifest; the first line names the columns (path, then one per label)") from None
    columns = [c.strip() for c in header]

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(columns):
                    raise BadInputError(
                        f"{source} line {reader.line_num}: {len(cells)} cells but the header has {len(columns)} columns"
                    )
                yield reader.line_num, dict(zip(columns, cells))
        except csv.Error as exc:
            raise BadInputError(f"{source} line {reader.line_num}: {exc}") from None

    return columns, rows()


def _jsonl_records(source: Path, text: str) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    parsed: list[tuple[int, dict[str, Any]]] = []
    columns: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{source} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise BadInputError(f"{source} line {number}: each line must be a JSON object with a path")
        for key in obj:
            if key not in columns:
                columns.append(key)
        parsed.append((number, obj))
    return columns, iter(parsed)


def _check(source: Path, records, task: Task, sha: str) -> Manifest:
    columns, rows = records
    label_ids = task.label_ids()
    verdict_ids = [v.id for v in task.verdicts]
    where = f"{source} line 1"
    if "path" not in columns:
        raise BadInputError(f"{where}: no 'path' column; name the file column 'path', then one column per label")
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise BadInputError(f"{where}: column {column!r} appears twice")
        seen.add(column)
        if column in _RESERVED or column in label_ids:
            continue
        extra = f" and a verdict column ({', '.join(verdict_ids)})" if verdict_ids else ""
        raise BadInputError(
            f"{where}: unknown label column {column!r}; task {task.name} has labels {', '.join(label_ids)}{extra}"
        )
    if "verdict" in columns and not verdict_ids:
        raise BadInputError(f"{where}: a verdict column, but task {task.name} has no verdicts (its verdict is the top label)")
    present = [c for c in columns if c in label_ids]
    if "label" in columns:
        if task.mode != "multiclass":
            raise BadInputError(f"{where}: a 'label' column names one class per row, but task {task.name} is multilabel; use one column per label")
        if present:
            raise BadInputError(f"{where}: give either a 'label' column or one column per label, not both")
        present = list(label_ids)
    if not present and "verdict" not in columns:
        raise BadInputError(f"{where}: no label or verdict columns; task {task.name} has labels {', '.join(label_ids)}")

    folder = source.parent
    out: list[ManifestRow] = []
    first_line: dict[str, int] = {}
    for line, record in rows:
        at = f"{source} line {line}"
        raw_path = record.get("path")
        path = str(raw_path).strip() if raw_path is not None else ""
        if not path:
            raise BadInputError(f"{at}: empty path")
        if path in first_line:
            raise BadInputError(f"{at}: {path} is already listed on line {first_line[path]}")
        first_line[path] = line
        file = Path(path) if os.path.isabs(path) else folder / path
        if not file.is_file():
            raise BadInputError(f"{at}: file not found: {path}" + ("" if os.path.isabs(path) else f" (looked in {folder})"))
        labels: dict[str, int | None] = {}
        if "label" in columns:
            value = record.get("label")
            value = None if value is None or str(value).strip().lower() in _UNKNOWN else str(value).strip()
            if value is not None and value not in label_ids:
                raise BadInputError(f"{at}: label {value!r} is not one of task {task.name}'s labels ({', '.join(label_ids)})")
            labels = {lid: None if value is None else int(lid == value) for lid in label_ids}
        else:
            for lid in present:
                try:
                    labels[lid] = parse_value(record.get(lid))
                except ValueError as exc:
                    hint = " (uncertain labels: map them to 0 or 1, or leave the cell empty)" if str(exc) in ("-1", "-1.0") else ""
                    raise BadInputError(
                        f"{at}: column {lid!r}: bad value {str(exc)!r}; use 1/0, true/false or yes/no, or leave it empty for unknown{hint}"
                    ) from None
            if task.mode == "multiclass":
                marked = [lid for lid in present if labels[lid] == 1]
                if len(marked) > 1:
                    raise BadInputError(
                        f"{at}: {len(marked)} classes marked present ({', '.join(marked)}), but task {task.name} is multiclass: one per row"
                    )
        verdict = None
        if "verdict" in columns:
            value = record.get("verdict")
            text = "" if value is None else str(value).strip()
            if text.lower() not in _UNKNOWN:
                if text not in verdict_ids:
                    raise BadInputError(f"{at}: verdict {text!r} is not one of {', '.join(verdict_ids)}")
                verdict = text
        out.append(ManifestRow(line, path, file, labels, verdict))
    if not out:
        raise BadInputError(f"{source}: no rows; add one line per file after the header")
    for lid in present:
        if all(r.labels.get(lid) is None for r in out):
            raise BadInputError(f"{where}: column {lid!r} is empty (no row gives a value); fill it in or remove it")
    if "verdict" in columns and all(r.verdict is None for r in out):
        raise BadInputError(f"{where}: column 'verdict' is empty (no row gives a value); fill it in or remove it")
    ordered = [lid for lid in label_ids if lid in present]
    return Manifest(source, out, ordered, "verdict" in columns, sha)
