"""The shape of the house: layering, plug-ins, the one ingest path, and the case index's parts alone."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medzero
from medzero.cli import main
from medzero.core import ingest, sniff
from medzero.core.errors import CaseIndexError
from test_retrieval import unit

PACKAGE = Path(medzero.__file__).parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the medzero modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {n for n in found if n.startswith("medzero")}


@pytest.mark.parametrize(
    "layer,forbidden",
    [
        ("core", ("medzero.audio", "medzero.image", "medzero.retrieval", "medzero.classifier", "medzero.cli", "medzero.app")),
        ("retrieval", ("medzero.classifier", "medzero.cli", "medzero.app", "medzero.audio", "medzero.image")),
        ("audio", ("medzero.image", "medzero.retrieval", "medzero.classifier")),
        ("image", ("medzero.audio", "medzero.retrieval", "medzero.classifier")),
    ],
)
def test_layers_never_import_upward(layer, forbidden):
    bad = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if n.startswith(forbidden))
        for path in (PACKAGE / layer).rglob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_image_loaders_do_not_import_each_other():
    assert not any(n.startswith("medzero.image.io") for n in _imports(PACKAGE / "image" / "dicom.py"))


def test_app_imports_only_public_names():
    for path in (PACKAGE / "app").glob("*.py"):
        private = sorted(n for n in _imports(path) if n.startswith(("medzero.core", "medzero.audio", "medzero.image", "medzero.retrieval")))
        assert private == [], path.name


def test_modalities_register_themselves():
    names = [m.name for m in medzero.modalities()]
    assert names == ["audio", "image"]
    audio = medzero.get_modality("audio")
    assert "snr_db" in audio.metric_info and audio.postprocess is not None
    assert medzero.get_modality("image").default_task == "chest_xray_findings"
    with pytest.raises(medzero.MedzeroError, match="unknown modality 'smell'; known: audio, image"):
        medzero.get_modality("smell")


def test_models_and_images_work_without_pyav():
    """A trimmed install without PyAV still lists every model and classifies nothing wrongly."""
    code = (
        "import sys, json; sys.modules['av'] = None\n"
        "import medzero\n"
        "models = sorted({m.modality for m in medzero.list_models()})\n"
        "print(json.dumps({'models': models, 'modalities': [m.name for m in medzero.modalities()]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"models": ["audio", "image"], "modalities": ["audio", "image"]}


def _count_sniffs(monkeypatch) -> list[int]:
    calls = [0]
    real = sniff._sniff_image

    def counting(head):
        calls[0] += 1
        return real(head)

    monkeypatch.setattr(sniff, "_sniff_image", counting)
    return calls


def test_each_file_is_sniffed_once(monkeypatch, tmp_path, audio_clips, dicom_files, tiny_clap_dir, tiny_hf_clip_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes(audio_clips["speech"].read_bytes())
    (folder / "b.mp3").write_bytes(audio_clips["mp3"].read_bytes())
    (folder / "c.dcm").write_bytes(dicom_files["phi"].read_bytes())
    models = {"audio_model": str(tiny_clap_dir), "image_model": f"local-dir:{tiny_hf_clip_dir}"}
    classifier = medzero.Classifier(labels="speech,noise", device="cpu", **models)
    classifier.classify_batch([folder])  # load the models outside the count
    calls = _count_sniffs(monkeypatch)
    results = classifier.classify_batch([folder])
    assert [r.error for r in results] == [None, None, None] and calls[0] == 3

    calls[0] = 0
    with medzero.CaseIndex(tmp_path / "ix", device="cpu", **models) as index:
        report = index.add([folder])
    assert len(report.added) == 3 and calls[0] == 3


def test_text_query_is_never_taken_for_a_file(tmp_path, audio_clips, tiny_clap_dir):
    with medzero.CaseIndex(tmp_path / "ix", audio_model=str(tiny_clap_dir), device="cpu") as index:
        index.add([audio_clips["speech"], audio_clips["noise"]])
        by_example = index.search_example(str(audio_clips["speech"]), k=1)
        assert by_example[0].path == str(audio_clips["speech"]) and by_example[0].score == pytest.approx(1.0, abs=1e-4)
        # The same string as words is embedded as text: it does not find the file with score 1.
        as_text = index.search_text(str(audio_clips["speech"]), k=1)
        assert as_text[0].score < 0.99
        with pytest.raises(medzero.BadInputError, match="search_text takes words"):
            index.search_text(audio_clips["speech"].read_bytes())


def test_write_lock_alone(tmp_path):
    from medzero.retrieval.locking import WriteLock

    first, second = WriteLock(tmp_path), WriteLock(tmp_path)
    with first.hold() as outermost:
        assert outermost
        with first.hold() as inner:  # re-entrant within one holder
            assert not inner
        with pytest.raises(CaseIndexError, match=rf"being written by another process \(pid {os.getpid()}\)"):
            with second.hold():
                pass
        assert second.other_writer_active()
    assert not first.held
    with second.hold():
        assert second.held


def test_consistency_core_alone(tmp_path):
    """SpaceSet with generated vectors: commit, reopen, lose the FAISS file, delete: always the database's truth."""
    from medzero.retrieval.locking import WriteLock
    from medzero.retrieval.spaces import SpaceSet
    from medzero.retrieval.store import Store

    def open_set():
        store = Store(str(tmp_path / "cases.sqlite"))
        return store, SpaceSet(tmp_path, store, WriteLock(tmp_path), readonly=False, approx_threshold=10_000, checkpoint_s=60)

    x = unit(np.random.default_rng(3), 300, 16)
    store, spaces = open_set()
    spaces.sync(opening=True)
    row = spaces.row_for("audio", "gen@1", 16, None)
    with spaces.lock.hold():
        ids = spaces.insert([(row, {"path": f"/c/{i}", "sha256": str(i), "vector": v, "metadata": {}}) for i, v in enumerate(x)])
        spaces.save(force=True)
    assert len(ids) == 300
    store.close()

    (tmp_path / f"space-{row.space}.faiss").unlink()  # lost: rebuilt from the stored vectors on open
    store, spaces = open_set()
    spaces.sync(opening=True)
    space = spaces.for_modality("audio")
    hits = spaces.search(space, x[7:8], 3, [], exact=False)
    assert hits[0].id == ids[7] and hits[0].path == "/c/7"
    with spaces.lock.hold():
        spaces.delete([(ids[7], row.space)])
    assert ids[7] not in {h.id for h in spaces.search(space, x[7:8], 10, [], exact=False)}
    assert store.count() == 299
    store.close()


def test_every_index_subcommand_takes_the_model_options(tmp_path, capsys, audio_clips, tiny_clap_dir, tiny_hf_clip_dir):
    idx = str(tmp_path / "idx")
    options = ["--audio-model", str(tiny_clap_dir), "--image-model", f"local-dir:{tiny_hf_clip_dir}", "--device", "cpu"]
    assert main(["index", "add", idx, str(audio_clips["speech"]), *options]) == 0
    capsys.readouterr()
    assert main(["index", "search", idx, "speech", *options, "--format", "json"]) == 0
    assert [h["path"] for h in json.loads(capsys.readouterr().out)] == [str(audio_clips["speech"])]
    assert main(["index", "stats", idx, *options]) == 0
    assert json.loads(capsys.readouterr().out)["cases"] == 1
    assert main(["index", "remove", idx, "1", *options]) == 0
    assert "removed 1 case(s); 0 left" in capsys.readouterr().out
