"""The case index against brute force: generated vectors, the approximate index, and real files
embedded with the tiny CLAP and CLIP checkpoints."""
from __future__ import annotations

import logging
import sqlite3

import numpy as np
import pytest

from medzero import CaseIndexError
from medzero.retrieval import CaseIndex, parse_where


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


STORES = ["local", "postgresql"]


def is_pg(path) -> bool:
    return isinstance(path, str) and path.startswith("postgresql://")


def new_index_target(request, kind: str, folder):
    """Where a test's index lives: the folder ``folder``, or a fresh PostgreSQL database."""
    if kind == "local":
        return folder
    server = request.getfixturevalue("pg_server")
    name = server.create_database()
    request.addfinalizer(lambda: server.drop_database(name))
    return server.url(name)


@pytest.fixture(params=STORES)
def target(request, tmp_path):
    """An empty index location in each store: a folder, or a fresh PostgreSQL database URL."""
    return new_index_target(request, request.param, tmp_path / "ix")


_PG_READ: dict = {}


def stored_cases(path) -> list[dict]:
    """Every stored case read directly, not through medzero: SQLite rows and the vector files of a
    folder, or the tables of a PostgreSQL index (``id``, ``space``, ``modality``, ``metadata``,
    ``scores``, ``vector``), in id order."""
    if is_pg(path):
        import psycopg
        from pgvector.psycopg import register_vector

        with psycopg.connect(path) as conn:
            register_vector(conn)
            state = (path, *conn.execute("SELECT count(*), max(id), sum(id) FROM cases").fetchone())
            if _PG_READ.get("state") != state:  # the same cases as last read: reuse them
                rows = conn.execute("SELECT id, space, modality, metadata, scores, embedding FROM cases ORDER BY id", binary=True).fetchall()
                _PG_READ.update(state=state, cases=[
                    dict(id=r[0], space=r[1], modality=r[2], metadata=r[3], scores=r[4], vector=r[5].to_numpy()) for r in rows
                ])
        return _PG_READ["cases"]
    import json

    db = sqlite3.connect(str(path / "cases.sqlite"))
    rows = db.execute("SELECT id, space, modality, metadata, scores, vector_row FROM cases ORDER BY id").fetchall()
    dims = dict(db.execute("SELECT space, dim FROM spaces").fetchall())
    db.close()
    files = {s: np.fromfile(path / f"vectors-{s}.f32", dtype="<f4") for s in {r[1] for r in rows}}
    files = {s: v[: len(v) // dims[s] * dims[s]].reshape(-1, dims[s]) for s, v in files.items()}
    return [
        dict(id=r[0], space=r[1], modality=r[2], metadata=json.loads(r[3]), scores=json.loads(r[4]) if r[4] else None, vector=files[r[1]][r[5]])
        for r in rows
    ]


def db_vectors(path, where_sql="1", params=()) -> tuple[np.ndarray, np.ndarray]:
    """Every stored (id, vector) read directly, rows with sqlite3 and vectors with numpy from each
    space's vector file (or from PostgreSQL): the brute-force reference. ``where_sql``: SQLite
    SQL (a folder only), or a predicate on a :func:`stored_cases` dict (either store)."""
    if callable(where_sql) or is_pg(path):
        assert callable(where_sql) or where_sql == "1", "filter a PostgreSQL index's cases with a predicate"
        rows = [c for c in stored_cases(path) if where_sql == "1" or where_sql(c)]
        ids = np.array([c["id"] for c in rows], dtype=np.int64)
        return ids, (np.stack([c["vector"] for c in rows]) if rows else np.zeros((0, 0), np.float32))
    db = sqlite3.connect(str(path / "cases.sqlite"))
    rows = db.execute(f"SELECT id, space, vector_row FROM cases WHERE {where_sql} ORDER BY id", params).fetchall()
    dims = dict(db.execute("SELECT space, dim FROM spaces").fetchall())
    db.close()
    files = {s: np.fromfile(path / f"vectors-{s}.f32", dtype="<f4") for s in {r[1] for r in rows}}
    files = {s: v[: len(v) // dims[s] * dims[s]].reshape(-1, dims[s]) for s, v in files.items()}
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vecs = np.stack([files[space][row] for _, space, row in rows]) if rows else np.zeros((0, 0), np.float32)
    return ids, vecs


def brute(path, query: np.ndarray, k: int, where_sql="1", params=()) -> list[int]:
    ids, vecs = db_vectors(path, where_sql, params)
    q = query / np.linalg.norm(query)
    scores = vecs @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order].tolist()


def assert_matches_brute(hits, path, query: np.ndarray, k: int, where_sql="1", params=()) -> None:
    """Same scores as brute force, and the same ids except where two cases tie within float error."""
    ids, vecs = db_vectors(path, where_sql, params)
    scores = vecs @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    np.testing.assert_allclose([h.score for h in hits], scores[order], atol=1e-5)
    for hit, i in zip(hits, order):
        assert hit.id == ids[i] or abs(scores[ids == hit.id][0] - scores[i]) < 1e-5


def generated_rows(n: int) -> list[dict]:
    return [
        {
            "path": f"/cases/{i}.dcm",
            "metadata": {"ViewPosition": "PA" if i % 3 == 0 else "AP", "bucket": i % 7},
            "task": "chest_xray_findings",
            "scores": {"pleural_effusion": (i % 100) / 100.0},
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module", params=STORES)
def generated(request, tmp_path_factory):
    path = new_index_target(request, request.param, tmp_path_factory.mktemp("gen") / "index")
    rng = np.random.default_rng(0)
    x = unit(rng, 3000, 32)
    with CaseIndex(path) as index:
        report = index.add_vectors(x, generated_rows(len(x)), modality="image", fingerprint="gen@1", batch_size=700)
    assert len(report.added) == 3000 and not report.duplicates and not report.errors
    return path, x


# -- generated data ------------------------------------------------------------------------------------


def test_search_matches_brute_force(generated):
    path, x = generated
    rng = np.random.default_rng(1)
    with CaseIndex(path, readonly=True) as index:
        assert len(index) == 3000
        for q in unit(rng, 20, 32):
            hits = index.search_vector(q, k=10)
            assert [h.id for h in hits] == brute(path, q, 10)
            assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
            assert hits[0].modality == "image" and hits[0].path.startswith("/cases/")
        # An exact copy of a stored vector finds itself with cosine 1.
        top = index.search_vector(x[42] * 3.0, k=1)[0]  # scaling does not matter: medzero normalises
        assert top.path == "/cases/42.dcm" and top.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "where, wanted",
    [
        ("ViewPosition=PA", lambda c: c["metadata"]["ViewPosition"] == "PA"),
        ({"ViewPosition": "PA"}, lambda c: c["metadata"]["ViewPosition"] == "PA"),
        ("score.pleural_effusion>0.95", lambda c: c["scores"]["pleural_effusion"] > 0.95),
        (
            ["ViewPosition=AP", "score.pleural_effusion>=0.5, bucket=3"],
            lambda c: c["metadata"]["ViewPosition"] == "AP" and c["scores"]["pleural_effusion"] >= 0.5 and c["metadata"]["bucket"] == 3,
        ),
        ("modality=image, ViewPosition!=PA", lambda c: c["modality"] == "image" and c["metadata"]["ViewPosition"] != "PA"),
    ],
)
def test_where_filters_before_ranking(generated, where, wanted):
    path, _ = generated
    rng = np.random.default_rng(2)
    with CaseIndex(path, readonly=True) as index:
        for q in unit(rng, 5, 32):
            for k in (1, 3, 10):  # k small with a selective filter still gets k matches
                hits = index.search_vector(q, k=k, where=where)
                assert [h.id for h in hits] == brute(path, q, k, wanted)
                assert len(hits) == k


def test_where_for_the_other_modality_or_nothing_matching(generated):
    path, x = generated
    with CaseIndex(path, readonly=True) as index:
        assert index.search_vector(x[0], k=5, where="modality=audio") == []
        assert index.search_vector(x[0], k=5, where="ViewPosition=LL") == []
        assert index.search_vector(x[0], k=5, modality="audio") == []


def test_parse_where_forms_and_errors():
    assert parse_where("ViewPosition=PA, score.x>0.5") == [("ViewPosition", "=", "PA"), ("score.x", ">", (0.5, "0.5"))]
    assert parse_where({"modality": ["audio", "image"]}) == [("modality", "in", ["audio", "image"])]
    assert parse_where({"score.x": (">", 0.2)}) == [("score.x", ">", 0.2)]
    with pytest.raises(CaseIndexError, match="cannot read the filter"):
        parse_where("ViewPosition PA")
    with pytest.raises(CaseIndexError, match="not a number"):
        parse_where("score.x>high")


def test_wrong_dimension_is_one_line_error(generated):
    path, _ = generated
    with CaseIndex(path, readonly=True) as index:
        with pytest.raises(CaseIndexError, match="16 dimensions.*32-dimensional"):
            index.search_vector(np.ones(16, dtype=np.float32), k=3)
    with CaseIndex(path) as index:
        with pytest.raises(CaseIndexError, match="32-dimensional image vectors; these have 8"):
            index.add_vectors(np.ones((2, 8), np.float32), modality="image")
        with pytest.raises(CaseIndexError, match="holds image embeddings from gen@1; this session uses other@2"):
            index.add_vectors(np.ones((2, 32), np.float32), modality="image", fingerprint="other@2")


def test_duplicates_skipped_and_remove(target):
    rng = np.random.default_rng(3)
    x = unit(rng, 50, 16)
    with CaseIndex(target) as index:
        first = index.add_vectors(x[:30], modality="audio", fingerprint="a@1")
        again = index.add_vectors(x, [{"path": f"p{i}"} for i in range(50)], modality="audio")
        assert len(first.added) == 30 and len(again.added) == 20
        assert again.duplicates == [f"p{i}" for i in range(30)]
        assert len(index) == 50
        removed = index.remove([first.added[0], "p40", 10**9])
        assert removed == [first.added[0], again.added[10]]
        assert len(index) == 48
        hits = index.search_vector(x[0], k=48)
        assert first.added[0] not in {h.id for h in hits} and len(hits) == 48
    with CaseIndex(target) as index:  # the removal is stored (on disk: in both files)
        assert len(index) == 48 and index.stats()["spaces"][0]["count"] == 48
        assert [h.id for h in index.search_vector(x[5], k=5)] == brute(target, x[5], 5)


# -- the approximate index -----------------------------------------------------------------------------------


def _approximate_index(path, n: int):
    rng = np.random.default_rng(4)
    x = unit(rng, n, 64)
    rows = [{"metadata": {"half": i % 2, "rare": int(i % 1000 == 0)}} for i in range(len(x))]
    with CaseIndex(path, approx_threshold=10_000) as index:
        index.add_vectors(x, rows, modality="image", fingerprint="approx@1", batch_size=25_000)
        kind = index.stats()["spaces"][0]["index_type"]
        assert kind.startswith("HNSW") if is_pg(path) else kind.startswith("IDMap2,PQ32x4fs,RFlat")
    return path, x


@pytest.fixture(scope="module")
def approximate(tmp_path_factory):
    """50,000 vectors in an approximate space of an index folder (FAISS-specific tests use it)."""
    return _approximate_index(tmp_path_factory.mktemp("approximate") / "index", 50_000)


@pytest.fixture(scope="module")
def approximate_pg(request):
    """20,000 vectors in an HNSW space of a PostgreSQL index (fewer: building HNSW costs more)."""
    return _approximate_index(new_index_target(request, "postgresql", None), 20_000)


def _recall(index, path, queries, k=10, where=None, sql="1") -> float:
    ids, vecs = db_vectors(path, sql)
    truth = ids[np.argsort(-(queries @ vecs.T), axis=1, kind="stable")[:, :k]]
    found = sum(len({h.id for h in index.search_vector(q, k=k, where=where)} & set(t)) for q, t in zip(queries, truth))
    return found / (k * len(queries))


@pytest.mark.parametrize("built", ["approximate", "approximate_pg"])
def test_approximate_recall_and_exact_switch(request, built):
    path, _ = request.getfixturevalue(built)
    queries = unit(np.random.default_rng(5), 100, 64)
    with CaseIndex(path, readonly=True) as index:
        assert _recall(index, path, queries) >= 0.95
        for q in queries[:10]:
            assert [h.id for h in index.search_vector(q, k=10, exact=True)] == brute(path, q, 10)
        # A wide filter over-fetches and drops what it excludes; a narrow one is searched exactly.
        assert _recall(index, path, queries[:40], where="half=1", sql=lambda c: c["metadata"]["half"] == 1) >= 0.95
        assert _recall(index, path, queries[:10], where="rare=1", sql=lambda c: c["metadata"]["rare"] == 1) == 1.0


def test_remove_from_approximate_index_keeps_tombstones_out_of_results(approximate, tmp_path, caplog):
    import shutil

    src, _ = approximate
    path = tmp_path / "copy"
    shutil.copytree(src, path)
    queries = unit(np.random.default_rng(6), 5, 64)
    with CaseIndex(path, approx_threshold=10_000) as index:
        top = [index.search_vector(q, k=3)[0].id for q in queries]
        assert sorted(index.remove(top)) == sorted(set(top))
        for q in queries:
            assert not {h.id for h in index.search_vector(q, k=10)} & set(top)
            assert [h.id for h in index.search_vector(q, k=10, exact=True)] == brute(path, q, 10)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        with CaseIndex(path, readonly=True) as index:
            assert len(index) == 50_000 - len(set(top))
            assert index.stats()["spaces"][0]["tombstones"] == len(set(top))
            for q in queries:
                assert not {h.id for h in index.search_vector(q, k=10)} & set(top)
    assert not caplog.records  # tombstones are not a mismatch


# -- real files, tiny models -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=STORES)
def real(request, tmp_path_factory, tiny_clap_dir, tiny_clip_dir, audio_clips, dicom_files, image_files):
    path = new_index_target(request, request.param, tmp_path_factory.mktemp("real") / "index")
    audio = [audio_clips[n] for n in ("speech", "noisy_0db", "telephone", "clipped", "noise", "flac")]
    images = [dicom_files[n] for n in ("phi", "mono2", "ct", "rgb", "multiframe")] + [
        image_files[n] for n in ("gray8.png", "rgb.png", "photo.jpg")
    ]
    bad = [image_files["truncated.png"], image_files["text.txt"]]
    index = CaseIndex(path, audio_model=str(tiny_clap_dir), image_model=str(tiny_clip_dir), device="cpu")
    report = index.add([*audio, *images, *bad], task="chest_xray_findings", batch_size=4)
    yield index, path, report, audio, images, bad
    index.close()


def test_add_real_files_reports_each_file(real):
    index, path, report, audio, images, bad = real
    assert len(report.added) == len(audio) + len(images) == len(index)
    assert [p for p, _ in report.errors] == [str(p) for p in bad]
    assert all(msg and "\n" not in msg for _, msg in report.errors)
    stats = index.stats()
    assert {s["modality"]: s["count"] for s in stats["spaces"]} == {"audio": len(audio), "image": len(images)}
    again = index.add([audio[0], images[0], images[1]])
    assert again.added == [] and again.duplicates == [str(audio[0]), str(images[0]), str(images[1])]


def test_text_query_matches_brute_force_per_space(real):
    index, path, _, audio, images, _ = real
    for modality, text in (("audio", "speech with a crying child in the background"), ("image", "left pleural effusion")):
        q = index.encoder(modality).embed_text([text])[0]
        hits = index.search_text(text, k=4, modality=modality)
        assert_matches_brute(hits, path, q, 4, lambda c, m=modality: c["modality"] == m)
        assert all(h.modality == modality for h in hits)
    # Over both spaces the per-space lists interleave by rank.
    both = index.search_text("a person speaking", k=6)
    assert {h.modality for h in both} == {"audio", "image"}
    assert [h.modality for h in both[:2]] in (["audio", "image"], ["image", "audio"])


def test_example_query_finds_itself(real):
    index, path, _, audio, images, _ = real
    for example in (audio[2], images[0]):
        hits = index.search_example(example, k=3)
        assert hits[0].path == str(example) and hits[0].score == pytest.approx(1.0, abs=1e-4)
        modality = hits[0].modality
        assert all(h.modality == modality for h in hits)
        q = index.encoder(modality).embed([_load(example, index, modality)])[0]
        assert_matches_brute(hits, path, q, 3, lambda c, m=modality: c["modality"] == m)
    hits = index.search_example(images[1].read_bytes(), k=1)  # bytes work too
    assert hits[0].path == str(images[1])


def _load(path, index, modality):
    if modality == "audio":
        from medzero.audio.io import load_audio

        return load_audio(path, sample_rate=index.encoder("audio").sample_rate)
    from medzero.image import read_image

    return read_image(path)


def test_real_where_filters_and_scores(real):
    index, path, _, audio, images, _ = real
    hits = index.search_text("chest radiograph", k=5, where="ViewPosition=PA")
    assert [h.path for h in hits] == [str(images[0])]  # only the PHI-laden DICOM has a view position
    assert "PatientName" not in hits[0].metadata and hits[0].metadata["task"] == "chest_xray_findings"
    values = sorted(h.metadata["scores"]["pleural_effusion"] for h in index.search_text("x", k=20, modality="image"))
    threshold = values[len(values) // 2]
    hits = index.search_text("left pleural effusion", k=20, where=f"score.pleural_effusion>{threshold}")
    assert len(hits) == sum(v > threshold for v in values) > 0
    assert all(h.metadata["scores"]["pleural_effusion"] > threshold for h in hits)
    audio_hits = index.search_text("speech", k=20, modality="audio")
    assert all("scores" not in h.metadata and h.metadata["duration_s"] > 0 for h in audio_hits)


def test_other_model_for_a_space_is_refused(real, tmp_path):
    from fixtures_clap import build_tiny_clap

    index, path, *_ = real
    other = build_tiny_clap(tmp_path / "clap2", seed=2)
    with CaseIndex(path, audio_model=str(other), readonly=True) as wrong:
        with pytest.raises(CaseIndexError) as err:
            wrong.search_text("speech", k=3, modality="audio")
        message = str(err.value)
        assert index.encoder("audio").fingerprint in message and "clap2@sha256:" in message
        assert "--audio-model" in message and "\n" not in message
    # Without naming a model the index's own is used.
    with CaseIndex(path, readonly=True) as remembered:
        assert remembered.encoder("audio").fingerprint == index.encoder("audio").fingerprint


def test_small_add_to_a_large_space_defers_rewriting_its_file(approximate, tmp_path, caplog):
    """Adding a few cases does not rewrite a large FAISS file; the next open reads them from the database."""
    import shutil

    src, _ = approximate
    path = tmp_path / "copy"
    shutil.copytree(src, path)
    [faiss_file] = path.glob("space-*.faiss")
    before = faiss_file.stat().st_mtime_ns
    new = unit(np.random.default_rng(7), 200, 64)
    with CaseIndex(path, approx_threshold=10_000) as index:
        added = index.add_vectors(new, modality="image").added
        assert [h.id for h in index.search_vector(new[3], k=1)] == [added[3]]
    assert faiss_file.stat().st_mtime_ns == before
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        with CaseIndex(path, readonly=True) as index:
            assert len(index) == 50_000 + 200
            assert [h.id for h in index.search_vector(new[3], k=1)] == [added[3]]
            assert [h.id for h in index.search_vector(new[150], k=10)] == brute(path, new[150], 10)
    assert not caplog.records
