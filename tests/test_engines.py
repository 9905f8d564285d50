"""Engines given as objects, and the case index's writer API they commit through (no Ray needed).

The ray engine itself is tested against the local engine in test_ray_engine.py; here an engine
of the test's own shows that the index and the classifier call whatever they are given, and that
what the writer commits is what the index then holds.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

import medzero
from medzero.core.engines import engine_names, resolve_engine
from medzero.core.errors import BadInputError, CaseIndexError
from medzero.retrieval import AddReport, CaseIndex, IndexWriter
from test_retrieval import brute, unit


class VectorEngine:
    """Embeds nothing: each source is a vector, committed through ``index.writer()``."""

    def __init__(self):
        self.calls = []

    def add(self, index, sources, task=None, *, batch_size=64, progress=None):
        self.calls.append(("add", task, batch_size))
        report = AddReport()
        with index.writer() as writer:
            assert isinstance(writer, IndexWriter)
            row = writer.space_row("image", "fake@1", sources.shape[1], writer.model_ref("image"))
            cases = [
                (row, {"path": f"case-{i}", "sha256": hashlib.sha256(v.tobytes()).hexdigest(), "vector": v})
                for i, v in enumerate(sources)
            ]
            known = writer.known_sha256(row.space, [c["sha256"] for _, c in cases])
            report.duplicates += [c["path"] for _, c in cases if c["sha256"] in known]
            report.added += writer.insert([(r, c) for r, c in cases if c["sha256"] not in known])
            writer.save()
        self.writer = writer
        return report

    def classify_dataset(self, classifier, dataset, *, batch_size=None):
        self.calls.append(("classify_dataset", dataset, batch_size))
        return "rows"


def test_names_resolve_through_the_declared_table():
    assert engine_names() == ["local", "ray"]
    assert resolve_engine("local") is None and resolve_engine(None) is None
    engine = VectorEngine()
    assert resolve_engine(engine) is engine
    from medzero.distributed import RayEngine, RayOptions

    options = RayOptions(actors=3)
    assert resolve_engine("ray", options) == RayEngine(options)
    for wrong in ("spark", 42):
        with pytest.raises(BadInputError, match=f"^engine must be local or ray, not {wrong!r}$"):
            resolve_engine(wrong)


def test_an_engine_object_commits_through_the_writer(tmp_path):
    vectors = unit(np.random.default_rng(0), 20, 16)
    engine = VectorEngine()
    with CaseIndex(tmp_path / "ix") as index:
        report = index.add(vectors, "a task", batch_size=5, engine=engine)
        assert engine.calls == [("add", "a task", 5)]
        assert len(report.added) == 20 and report.duplicates == []
        again = index.add(vectors[:4], engine=engine)
        assert again.added == [] and again.duplicates == [f"case-{i}" for i in range(4)]
        assert len(index) == 20
        with pytest.raises(CaseIndexError, match="used after its with block ended"):
            engine.writer.insert([])
        with index.writer() as writer:
            digests = writer.digests("fake@1")
            expected = np.sort(np.array([hashlib.sha256(v.tobytes()).digest() for v in vectors], dtype="S32"))
            assert digests.dtype == np.dtype("S32") and (digests == expected).all()
            assert writer.digests("other@1").size == 0
            assert writer.loaded_encoders() == {}
            with pytest.raises(CaseIndexError, match="holds 16-dimensional image vectors; these have 8"):
                writer.space_row("image", "fake@1", 8, None)
    with CaseIndex(tmp_path / "ix", readonly=True) as index:
        query = vectors[3]
        assert [h.id for h in index.search_vector(query, k=5)] == brute(tmp_path / "ix", query, 5)
        with pytest.raises(CaseIndexError, match="read-only"), index.writer():
            pass


def test_the_classifier_hands_datasets_to_its_engine():
    classifier = medzero.Classifier(labels="a,b")
    engine = VectorEngine()
    assert classifier.classify_dataset("dataset", batch_size=7, engine=engine) == "rows"
    assert engine.calls == [("classify_dataset", "dataset", 7)]
    with pytest.raises(BadInputError, match="not the local one"):
        classifier.classify_dataset("dataset", engine="local")
    assert classifier.head_modalities() == []


def test_a_digest_ending_in_a_zero_byte_is_known():
    """numpy's S32 drops trailing zero bytes: a file whose sha256 ends in 0x00 (one in 256) was
    never found among the index's digests, so a re-run with the ray engine embedded it again."""
    import hashlib

    import numpy as np

    from medzero.distributed._index import _holds

    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(1000)]
    zero_ended = [d for d in digests if d.endswith(b"\x00")]
    assert len(zero_ended) == 2  # among these thousand: the digests of "403" and "932"
    held = np.sort(np.array(digests, dtype="S32"))
    assert all(_holds(held, d) for d in digests)
    assert not _holds(held, hashlib.sha256(b"not indexed").digest())
