"""Results as Arrow tables and Parquet files: one row per file, scores and metrics as columns.

Columns: ``path, modality, task, model, verdict, error``, then ``score.<label>`` for every label
and ``metric.<name>`` for every measurement (null where a row has none), then ``result``: the
whole :meth:`Result.to_dict` as JSON (reasons, verdict names, metadata, a long recording's
timeline), so nothing the local engine reports is lost. Failed files keep their row, with
``error`` set. Needs pyarrow only (no Ray), so the local engine writes the same files.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Sequence

from ..core.files import replacing

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from ..core.results import Result

__all__ = ["RESULT_COLUMNS", "result_schema", "results_table", "write_parquet"]

#: The fixed leading columns of a results table.
RESULT_COLUMNS = ("path", "modality", "task", "model", "verdict", "error")


def result_schema(labels: Sequence[str], metrics: Sequence[str], *, order: bool = False) -> "pa.Schema":
    """The table's schema for these label ids and metric names (``order``: a leading int64 column
    carrying each file's position in the input, for sorting rows that arrive out of order)."""
    import pyarrow as pa

    fields = [pa.field("order", pa.int64())] if order else []
    fields += [pa.field(name, pa.string()) for name in RESULT_COLUMNS]
    fields += [pa.field(f"score.{label}", pa.float64()) for label in labels]
    fields += [pa.field(f"metric.{name}", pa.float64()) for name in metrics]
    fields.append(pa.field("result", pa.string()))
    return pa.schema(fields)


def results_table(
    results: Sequence["Result"],
    labels: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    *,
    order: Sequence[int] | None = None,
) -> "pa.Table":
    """Results as a table. ``labels`` / ``metrics``: the score and metric columns (default: every
    one the results hold, in order of appearance); a value outside them stays in ``result`` only."""
    import pyarrow as pa

    if labels is None:
        labels = list(dict.fromkeys(k for r in results for k in r.scores))
    if metrics is None:
        metrics = list(dict.fromkeys(k for r in results for k in r.metrics))
    schema = result_schema(labels, metrics, order=order is not None)
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    if order is not None:
        columns["order"] = [None if i is None else int(i) for i in order]  # null: the input had no order column
    for r in results:
        columns["path"].append(r.source)
        columns["modality"].append(r.modality)
        columns["task"].append(r.task)
        columns["model"].append(r.model)
        columns["verdict"].append(r.verdict)
        columns["error"].append(r.error)
        for label in labels:
            columns[f"score.{label}"].append(_number(r.scores.get(label)))
        for name in metrics:
            columns[f"metric.{name}"].append(_number(r.metrics.get(name)))
        columns["result"].append(json.dumps(r.to_dict(), ensure_ascii=False, default=str))
    return pa.table(columns, schema=schema)


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def write_parquet(table: "pa.Table", path: str | os.PathLike) -> None:
    """Write ``table`` to ``path`` atomically: a temporary file beside it, fsync, rename, fsync the
    folder. A reader sees the old file or the whole new one, never half of it."""
    import pyarrow.parquet as pq

    with replacing(path) as tmp:
        pq.write_table(table, tmp)
