"""The ray engine: classification and case indexing on a Ray cluster, through Ray Data.

For archives that outgrow one machine. The work is the library's own path, spread out: files
are listed on the driver; sniffed, read and decoded in Ray tasks (``Source.of``,
``Pipeline.prepare``); embedded by a pool of actors that each load the models once (a GPU each
when the cluster has GPUs, CPUs otherwise), which also score (``Classifier.classify_prepared``);
and the results stream back to the driver. Scores equal the local engine's.

    from medzero.distributed import RayEngine, RayOptions, classify_files, write_parquet
    table = classify_files(classifier, ["/archive/2024/"], options=RayOptions(address="auto"))
    write_parquet(table, "results.parquet")            # one row per file, scores as columns
    ray_engine = RayEngine(RayOptions(address="auto"))
    ds = classifier.classify_dataset(ray.data.read_binary_files("s3://bucket/cxr/", include_paths=True), engine=ray_engine)
    with CaseIndex("cases/") as index:
        index.add(["/archive/2024/"], engine=ray_engine)   # the driver stays the one writer
    with CaseIndex("postgresql://medzero@db/cases") as index:
        index.add(["/archive/2024/"], engine=ray_engine)   # each actor inserts its own batches

The classifier and the case index are given a :class:`RayEngine` (or the name ``"ray"``, which
``medzero/__init__.py`` declares to :mod:`medzero.core.engines`) and never import this package.
Into an index folder the driver commits through the index's public writer (``CaseIndex.writer()``);
into a PostgreSQL index, which takes many writers, the actors insert directly, each over its own
connection opened from ``CaseIndex.location`` (credentials never printed).

Ray is an optional extra (``pip install 'medzero[ray]'``); without it these raise a one-line
:class:`~medzero.MedzeroError` naming it. Nothing here imports Ray until it is used.
See ``docs/scaling.md`` for running it on N nodes.
"""
from __future__ import annotations

import importlib

#: public name -> module
_EXPORTS = {
    "EXTRA_MESSAGE": "._engine",
    "RayOptions": "._engine",
    "ListedFile": "._engine",
    "EncoderFacts": "._engine",
    "require_ray": "._engine",
    "connect": "._engine",
    "list_files": "._engine",
    "describe": "._engine",
    "result_columns": "._engine",
    "classify_dataset": "._engine",
    "classify_files": "._engine",
    "RayEngine": "._ray",
    "RayAddReport": "._index",
    "add_with_ray": "._index",
    "result_schema": "._tables",
    "results_table": "._tables",
    "write_parquet": "._tables",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medzero.distributed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
