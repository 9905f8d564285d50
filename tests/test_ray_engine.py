"""The ray engine (medzero.distributed) against the local engine, on a Ray started here with 2 CPUs.

One cluster for the module. Tiny checkpoints in the real formats, real recordings (espeak-ng speech
as WAV, M4A and AMR) and real DICOM (written with pydicom, and pydicom's own test files), with bad
files among them that must become error rows. A driver killed with SIGKILL mid-add leaves an
index that opens consistent, and the same add then computes only what is missing.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import medzero
from medzero.cli import main
from medzero.core.errors import BadInputError, CaseIndexError
from medzero.retrieval import CaseIndex
from test_architecture import MODULES, PACKAGE, _imports_of
from test_retrieval import brute
from test_retrieval_faults import committed

TOL = 1e-6

# Ray Data reads deprecated fields of its own DataContext when it copies one.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def cluster():
    """A Ray on this machine for the whole module (its workers inherit the test environment)."""
    # Ray Data logs every scheduling step at DEBUG (and its progress at INFO): warnings only, here
    # and in the workers, which inherit the variable.
    quiet = {"RAY_DATA_LOG_LEVEL": "WARNING"}
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    ray = pytest.importorskip("ray", reason="the ray extra: pip install 'medzero[ray]'")
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # in case ray.data was imported before
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def models(tiny_clap_dir, tiny_hf_clip_dir) -> dict[str, str]:
    return {"audio_model": str(tiny_clap_dir), "image_model": f"local-dir:{tiny_hf_clip_dir}"}


def _flags(models: dict[str, str]) -> list[str]:
    return ["--audio-model", models["audio_model"], "--image-model", models["image_model"], "--device", "cpu"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, audio_clips, dicom_files, image_files) -> dict[str, Path]:
    """A folder of studies, good and bad, plus two bad files named on their own."""
    root = tmp_path_factory.mktemp("archive")
    folder = root / "studies"
    for sub in ("audio", "dicom", "bad"):
        (folder / sub).mkdir(parents=True)
    for key, name in (("speech", "speech.wav"), ("m4a", "voice_note.m4a"), ("amr", "wechat.amr"), ("noisy_10db", "noisy.wav")):
        shutil.copy(audio_clips[key], folder / "audio" / name)
    for key in ("phi", "ct", "mono1", "rgb", "multiframe"):
        shutil.copy(dicom_files[key], folder / "dicom" / f"{key}.dcm")
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"):
        shutil.copy(get_testdata_file(name), folder / "dicom" / name)
    shutil.copy(image_files["rgb.png"], folder / "dicom" / "photo.png")
    # Bad files that are still audio or images by content: each must become an error row.
    shutil.copy(dicom_files["truncated"], folder / "bad" / "truncated.dcm")
    shutil.copy(dicom_files["no_pixels"], folder / "bad" / "report_sr.dcm")
    shutil.copy(image_files["truncated.png"], folder / "bad" / "truncated.png")
    # Files in a folder that are neither are not inputs (as with the local engine); hidden ones neither.
    (folder / "bad" / "notes.txt").write_text("not a study\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    renamed = root / "renamed.wav"
    renamed.write_text("a text file named .wav")
    return {"folder": folder, "renamed": renamed, "missing": root / "gone.dcm"}


BAD = {"truncated.dcm", "report_sr.dcm", "truncated.png", "renamed.wav", "gone.dcm"}


def _assert_same_result(row: dict, local) -> None:
    assert row["path"] == local.source
    assert row["error"] == local.error
    assert (row["modality"], row["task"], row["model"], row["verdict"]) == (local.modality, local.task, local.model, local.verdict)
    for label, score in local.scores.items():
        assert abs(row[f"score.{label}"] - score) <= TOL, (local.source, label)
    for name, value in local.metrics.items():
        assert row[f"metric.{name}"] == pytest.approx(value, rel=1e-9, abs=1e-9)
    whole = json.loads(row["result"])
    assert [r["id"] for r in whole["reasons"]] == [r.id for r in local.reasons]
    assert whole["metadata"] == json.loads(json.dumps(local.metadata, default=str))


# -- classification -------------------------------------------------------------------------------


def test_classify_equals_local_engine(cluster, archive, models):
    from medzero.distributed import classify_files

    classifier = medzero.Classifier(device="cpu", batch_size=3, **models)  # default task per modality
    sources = [str(archive["folder"]), str(archive["renamed"]), str(archive["missing"])]
    local = classifier.classify_batch(sources)
    seen = []
    table = classify_files(classifier, sources, batch_size=3, progress=seen.append)
    assert sum(seen) == 19  # every file listed is counted: the 18 rows and notes.txt, which is not a study

    assert table.column_names[:6] == ["path", "modality", "task", "model", "verdict", "error"]
    assert table.column_names[-1] == "result"
    assert {"score.pleural_effusion", "metric.snr_db"} <= set(table.column_names)
    rows = table.to_pylist()
    assert len(rows) == len(local) == 18
    for row, result in zip(rows, local):  # the same files, in the same order, with the same results
        _assert_same_result(row, result)
    failed = {Path(r["path"]).name for r in rows if r["error"]}
    assert failed == BAD
    assert all(r["score.pleural_effusion"] is None for r in rows if r["error"])

    # The Dataset API, from Ray's own reader: the bytes travel in the dataset.
    import ray

    dataset = ray.data.read_binary_files(str(archive["folder"] / "dicom"), include_paths=True)
    got = {r["path"]: r for r in classifier.classify_dataset(dataset, batch_size=3).take_all()}
    images = classifier.classify_batch([str(archive["folder"] / "dicom")])
    assert len(images) == 9 and set(got) == {r.source for r in images}
    for result in images:
        _assert_same_result(got[result.source], result)


def test_classify_command_writes_parquet(cluster, archive, models, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "results.parquet"
    args = ["classify", str(archive["folder"] / "audio"), str(archive["folder"] / "bad"), "--labels", "speech,noise", *_flags(models)]
    assert main([*args, "--engine", "ray", "--output", str(out), "--batch-size", "2"]) == 1  # bad files: exit 1, rows kept
    err = capsys.readouterr().err
    on_ray = pq.read_table(out)
    assert on_ray.column_names == [
        "path", "modality", "task", "model", "verdict", "error", "score.speech", "score.noise",
        *[f"metric.{name}" for name in medzero.get_modality("audio").metric_info], "result",
    ]
    assert [line for line in err.splitlines() if line.startswith("medzero: error:")] == [
        f"medzero: error: {e}" for e in on_ray.column("error").to_pylist() if e
    ]
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary left

    local_out = tmp_path / "local.parquet"
    assert main([*args, "--format", "parquet", "--output", str(local_out)]) == 1
    local = pq.read_table(local_out).to_pylist()
    rows = on_ray.to_pylist()
    assert [r["path"] for r in rows] == [r["path"] for r in local] and len(rows) == 7
    for a, b in zip(rows, local):
        assert a["error"] == b["error"] and a["verdict"] == b["verdict"]
        for key in ("score.speech", "score.noise"):
            assert (a[key] is None and b[key] is None) or abs(a[key] - b[key]) <= TOL

    capsys.readouterr()
    assert main([*args, "--engine", "ray"]) == 2  # Parquet needs a file
    assert main([*args, "--address", "auto"]) == 2  # --address goes with --engine ray
    assert main([*args, "--engine", "ray", "--format", "json", "-o", str(out)]) == 2
    assert "--address, --actors and --gpus-per-actor go with --engine ray" in capsys.readouterr().err


# -- the case index ----------------------------------------------------------------------------------


def _cases(path: Path) -> dict[str, dict]:
    """Every case read directly: its row with sqlite3, its vector from its space's vector file."""
    db = sqlite3.connect(str(path / "cases.sqlite"))
    dims = dict(db.execute("SELECT space, dim FROM spaces").fetchall())
    rows = db.execute(
        "SELECT path, sha256, modality, fingerprint, metadata, task, scores, duration_s, width, height, space, vector_row FROM cases"
    ).fetchall()
    db.close()
    files = {s: np.fromfile(path / f"vectors-{s}.f32", dtype="<f4").reshape(-1, d) for s, d in dims.items()}
    keys = ("sha256", "modality", "fingerprint", "metadata", "task", "scores", "duration_s", "width", "height")
    return {r[0]: {**dict(zip(keys, r[1:-2])), "vector": files[r[-2]][r[-1]]} for r in rows}


def test_index_add_equals_local_engine_and_reruns_add_nothing(cluster, archive, models, tiny_clip_dir, tmp_path, capsys):
    from medzero.distributed import RayOptions, add_with_ray

    folder = archive["folder"]
    with CaseIndex(tmp_path / "local", device="cpu", **models) as index:
        local = index.add([folder], task="chest_xray_findings", batch_size=4)
    code = main(["index", "add", str(tmp_path / "ray"), str(folder), "--engine", "ray", "--task", "chest_xray_findings",
                 "--batch-size", "4", "--format", "json", *_flags(models)])
    report = json.loads(capsys.readouterr().out)
    assert code == 1  # the bad files
    assert len(report["added"]) == len(local.added) == 13 and report["duplicates"] == []
    assert sorted((e["path"], e["error"]) for e in report["errors"]) == sorted(local.errors)
    assert {Path(p).name for p, _ in local.errors} == BAD - {"renamed.wav", "gone.dcm"}

    mine, theirs = _cases(tmp_path / "ray"), _cases(tmp_path / "local")
    assert set(mine) == set(theirs)
    for path, case in theirs.items():
        other = mine[path]
        for key in ("sha256", "modality", "fingerprint", "metadata", "task", "duration_s", "width", "height"):
            assert other[key] == case[key], (path, key)
        assert np.abs(other["vector"] - case["vector"]).max() <= TOL
        if case["scores"] is not None:
            a, b = json.loads(other["scores"]), json.loads(case["scores"])
            assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) <= TOL
    with CaseIndex(tmp_path / "ray", readonly=True) as index, CaseIndex(tmp_path / "local", readonly=True) as reference:
        for words in ("pleural effusion", "speech with background noise"):
            hits, expected = index.search_text(words, k=13), reference.search_text(words, k=13)
            np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], atol=1e-5)

    # Again: every file is known by its sha256 before it is decoded, so nothing is embedded.
    with CaseIndex(tmp_path / "ray", device="cpu", **models) as index:
        again = add_with_ray(index, [folder], batch_size=4, options=RayOptions(actors=1))
        assert (again.added, again.embedded, len(again.duplicates)) == ([], 0, 13)
        assert len(index) == 13

    with CaseIndex(tmp_path / "ray", device="cpu", **models) as index, pytest.raises(BadInputError, match="engine must be local or ray"):
        index.add([folder], engine="spark")

    # Another image model than the index's: the local engine's error, word for word.
    other = {**models, "image_model": f"local-dir:{tiny_clip_dir}"}
    one = [folder / "dicom" / "ct.dcm"]
    with CaseIndex(tmp_path / "ray", device="cpu", **other) as index:
        with pytest.raises(CaseIndexError) as expected:
            index.add(one)
        with pytest.raises(CaseIndexError, match="holds image embeddings from") as got:
            add_with_ray(index, one)
    assert str(got.value) == str(expected.value)


#: The command line in a process of its own (the test kills it).
CLI = "import sys; from medzero.cli import main; sys.exit(main(sys.argv[1:]))"


TOTAL = 40


@pytest.fixture(scope="module")
def many(tmp_path_factory, audio_clips) -> Path:
    """40 distinct real files: DICOMs written with pydicom and recordings made from the speech clip."""
    import soundfile as sf
    from fixtures_image import write_dicom

    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(3)
    for i in range(TOTAL - 4):
        write_dicom(folder / f"cxr_{i:02d}.dcm", rng.integers(0, 4096, (32, 40), dtype=np.uint16), bits_stored=12,
                    ViewPosition="PA" if i % 2 else "AP")
    speech, rate = sf.read(audio_clips["speech"], dtype="float32")
    for i in range(4):
        sf.write(folder / f"visit_{i}.wav", speech * (0.3 + 0.15 * i), rate)
    return folder


def _release(fifo: Path) -> None:
    """Give a reader blocked on ``fifo`` something to read (nothing happens when none is left)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader; Ray ended the dead driver's tasks
        return
    os.write(fd, b"not a study")
    os.close(fd)


def test_driver_killed_mid_add_leaves_a_consistent_index(cluster, many, models, tmp_path, caplog):
    """``medzero index add --engine ray`` killed with SIGKILL while batches stream back.

    Between the first and the second half of the files the command also names a named pipe that
    nobody writes: the task that sniffs it (and the file in its block) waits, so the run cannot
    finish before the kill, however fast the other batches stream back.
    """
    path, log, fifo = tmp_path / "index", tmp_path / "driver.log", tmp_path / "held.dcm"
    os.mkfifo(fifo)
    files = [str(f) for f in sorted(many.iterdir())]
    command = [sys.executable, "-c", CLI, "index", "add", str(path), *files[:20], str(fifo), *files[20:], "--engine", "ray",
               "--address", cluster, "--batch-size", "2", *_flags(models)]
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while committed(path) < 2:  # the first batch is in; kill it while the rest streams back
            if proc.poll() is not None:
                raise AssertionError(f"the driver exited early: {log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, "no batch was committed in 120 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        _release(fifo)
    assert proc.returncode == -signal.SIGKILL
    rows = committed(path)
    assert 2 <= rows < TOTAL  # the file that shares the pipe's block cannot be in, whatever else is

    # Ray ends the dead driver's tasks and actors: the cluster gets its two CPUs back.
    import ray

    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, f"the dead driver's workers still hold CPUs: {ray.available_resources()}"
        time.sleep(0.2)

    with CaseIndex(path, readonly=False, device="cpu", **models) as index:
        assert len(index) == rows
        for modality in ("image", "audio"):
            space = [s for s in index.stats()["spaces"] if s["modality"] == modality]
            if not space:
                continue
            for q in np.random.default_rng(5).standard_normal((5, space[0]["dim"])).astype(np.float32):
                hits = index.search_vector(q, k=5, modality=modality)
                assert [h.id for h in hits] == brute(path, q, 5, "modality = ?", (modality,))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medzero.retrieval"):
        with CaseIndex(path, readonly=True) as index:  # the FAISS files are in step now: nothing to repair
            assert len(index) == rows
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("medzero")]

    # The same add again (through the Python API) computes only what is missing.
    seen = []
    with CaseIndex(path, device="cpu", **models) as index:
        report = index.add([many], batch_size=4, engine="ray", progress=seen.append)
        assert (len(report.added), report.embedded, len(report.duplicates), report.errors) == (TOTAL - rows, TOTAL - rows, rows, [])
        assert len(index) == TOTAL
    assert sum(seen) == TOTAL  # progress counted every file
    db = sqlite3.connect(str(path / "cases.sqlite"))
    assert db.execute("SELECT count(DISTINCT sha256), count(DISTINCT path) FROM cases").fetchone() == (TOTAL, TOTAL)
    db.close()


# -- without Ray, and the layering -----------------------------------------------------------------------


def test_without_ray_the_engine_is_a_one_line_error(tmp_path, audio_clips):
    code = textwrap.dedent(
        """
        import sys
        sys.modules["ray"] = None  # as if the extra were not installed
        from medzero.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    for args in (
        ["classify", str(audio_clips["speech"]), "--engine", "ray", "--output", str(tmp_path / "r.parquet")],
        ["index", "add", str(tmp_path / "ix"), str(audio_clips["speech"]), "--engine", "ray"],
    ):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert (out.returncode, out.stderr, out.stdout) == (1, "medzero: error: the ray engine needs the ray extra: pip install 'medzero[ray]'\n", "")
    assert not (tmp_path / "ix").exists()

    api = textwrap.dedent(
        """
        import sys
        sys.modules["ray"] = None
        import medzero
        from medzero.retrieval import CaseIndex
        for call in (lambda: medzero.Classifier().classify_dataset(None),
                     lambda: CaseIndex(sys.argv[1]).add([sys.argv[2]], engine="ray")):
            try:
                call()
            except medzero.MedzeroError as exc:
                print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", api, str(tmp_path / "api"), str(audio_clips["speech"])], capture_output=True, text=True)
    assert out.stdout.splitlines() == ["the ray engine needs the ray extra: pip install 'medzero[ray]'"] * 2, out.stderr


def _imports(path: Path) -> set[str]:
    """The medzero modules a file imports at run time, as test_architecture reads them."""
    module = next(m for m, p in MODULES.items() if p == path)
    return {target for target, _, _ in _imports_of(module)}


def test_distributed_sits_beside_the_classifier_and_the_index():
    """It uses core's ingest path and the index's public writer; it knows no modality and no front end."""
    for path in (PACKAGE / "distributed").rglob("*.py"):
        bad = sorted(n for n in _imports(path) if n.startswith(("medzero.cli", "medzero.app", "medzero.audio", "medzero.image")))
        assert bad == [], path.name
    for layer in ("core", "audio", "image"):
        for path in (PACKAGE / layer).rglob("*.py"):
            assert not any(n.startswith("medzero.distributed") for n in _imports(path)), path
