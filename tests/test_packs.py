"""Model packs: ``medzero models pack`` on a connected machine, ``install`` and ``verify`` on an offline one.

The two machines are two medzero caches (``MEDZERO_CACHE_DIR``, where packs are installed) in one
test; the models are the tiny checkpoints in their real on-disk formats, packed under the registered
names so that the offline machine's defaults find them. A pack that the registry resolves from the
Hugging Face cache is made in a subprocess whose ``HF_HUB_CACHE`` holds a tiny CLAP as
``laion/clap-htsat-fused`` at a known commit, so that the recorded revision can be checked.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import medzero
from medzero.cli import main
from medzero.encoders import factory as registry

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CLAP_FILES = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"}
CLIP_FILES = {"open_clip_config.json", "open_clip_model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"}


def use_machine(monkeypatch, root: Path) -> Path:
    """Switch to another machine's medzero cache (its installed packs live in ``<root>/models``)."""
    monkeypatch.setenv("MEDZERO_CACHE_DIR", str(root))
    monkeypatch.delenv("MEDZERO_MODELS_DIR", raising=False)
    monkeypatch.delenv("MEDZERO_AUDIO_MODEL", raising=False)
    monkeypatch.delenv("MEDZERO_IMAGE_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry.clear_loaded()
    return root / "models"


def read_pack(path: Path) -> tuple[dict, dict[str, bytes]]:
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return json.loads(members.pop("medzero-pack.json")), members


def write_pack(path: Path, manifest: dict, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in [("medzero-pack.json", json.dumps(manifest).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medzero: error: "), err
    return lines[0]


@pytest.fixture
def licence(tmp_path) -> Path:
    path = tmp_path / "LICENSE"
    path.write_text("MIT License\n\nPermission is hereby granted, free of charge, ...\n")
    return path


@pytest.fixture
def pack_tar(tmp_path, monkeypatch, tiny_clap_dir, tiny_hf_clip_dir, licence, capsys) -> Path:
    """A pack of both tiny models, made on the 'connected' machine under the registered names."""
    use_machine(monkeypatch, tmp_path / "connected")
    out = tmp_path / "outbox" / "models.tar"
    code = main(["models", "pack", f"clap-htsat-fused={tiny_clap_dir}", f"biomedclip={tiny_hf_clip_dir}", "-o", str(out),
                 "--licence", str(licence)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return out


def test_pack_holds_weights_configs_tokenizer_preprocessing_licence_and_checksums(pack_tar, tiny_clap_dir, tiny_hf_clip_dir):
    manifest, members = read_pack(pack_tar)
    assert manifest["format"] == "medzero-model-pack" and manifest["version"] == 1
    entries = {m["name"]: m for m in manifest["models"]}
    assert set(entries) == {"clap-htsat-fused", "biomedclip"}
    assert set(members) == {f"{name}/{rel}" for name, e in entries.items() for rel in e["files"]}  # nothing unlisted
    for name, entry in entries.items():
        for rel, meta in entry["files"].items():
            data = members[f"{name}/{rel}"]
            assert meta == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert not any(rel.endswith((".bin", ".pt", ".pth")) for rel in entry["files"])  # weights as safetensors only
        assert "LICENSE" in entry["files"] and entry["licence"]["files"] == ["LICENSE"]
        assert entry["source_kind"] == "directory" and entry["revision"] is None
    clap, clip = entries["clap-htsat-fused"], entries["biomedclip"]
    assert CLAP_FILES <= set(clap["files"]) and CLIP_FILES <= set(clip["files"])
    assert clap["source"] == str(tiny_clap_dir.resolve()) and clip["source"] == str(tiny_hf_clip_dir.resolve())
    # The preprocessing the loader applied when the pack was made, read from the loaded model.
    original = registry.create(str(tiny_hf_clip_dir), modality="image", device="cpu")
    assert clip["preprocess"] == json.loads(json.dumps(original.preprocess_config()))
    assert clip["preprocess"]["image_size"] == [160, 160] and clip["preprocess"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert clap["preprocess"]["sampling_rate"] == 48000 and clap["preprocess"]["fusion"] is True
    assert clip["fingerprint"] == original.fingerprint


def test_install_verify_and_load_offline(pack_tar, tmp_path, monkeypatch, tiny_clap_dir, tiny_hf_clip_dir, image_files, capsys):
    originals = {
        "audio": registry.create(str(tiny_clap_dir), modality="audio", device="cpu"),
        "image": registry.create(str(tiny_hf_clip_dir), modality="image", device="cpu"),
    }
    models_dir = use_machine(monkeypatch, tmp_path / "offline")

    assert main(["models", "install", str(pack_tar)]) == 0
    out = capsys.readouterr().out
    assert f"installed clap-htsat-fused (audio, {originals['audio'].fingerprint}) in {models_dir / 'clap-htsat-fused'}" in out
    assert f"installed biomedclip (image, {originals['image'].fingerprint}) in {models_dir / 'biomedclip'}" in out

    assert main(["models", "verify"]) == 0
    out = capsys.readouterr().out
    assert "ok biomedclip: checksums match, loads offline with the pack's preprocessing" in out
    assert "ok clap-htsat-fused: checksums match" in out

    assert main(["models", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in ("clap-htsat-fused", "biomedclip"):
        assert rows[name]["available"] and rows[name]["default"] and rows[name]["from"] == "pack"
        assert str(models_dir / name) in rows[name]["where"]
    assert not rows["clap-htsat-unfused"]["available"] and "HF_HUB_OFFLINE is set" in rows["clap-htsat-unfused"]["where"]

    # The registered names now load the pack: the same weights and identity as the packed folders.
    for modality, original in originals.items():
        loaded = registry.create(None, modality=modality, device="cpu")
        assert loaded.fingerprint == original.fingerprint
        texts = ["a chest x ray", "a person speaking"]
        np.testing.assert_allclose(loaded.embed_text(texts), original.embed_text(texts), atol=1e-6)
    image = medzero.read_image(image_files["rgb.png"])
    np.testing.assert_allclose(registry.create(None, modality="image", device="cpu").embed([image]), originals["image"].embed([image]), atol=1e-6)

    assert main(["classify", str(image_files["rgb.png"]), "--format", "json"]) == 0  # the default image model: the pack
    record = json.loads(capsys.readouterr().out)[0]
    assert record["error"] is None and record["model"] == originals["image"].fingerprint


def test_a_tampered_pack_is_refused_with_one_line_and_installs_nothing(pack_tar, tmp_path, monkeypatch, capsys):
    manifest, members = read_pack(pack_tar)
    weights = "biomedclip/open_clip_model.safetensors"
    data = bytearray(members[weights])
    data[len(data) // 2] ^= 0xFF  # one byte, same size
    bad = write_pack(tmp_path / "tampered.tar", manifest, {**members, weights: bytes(data)})
    models_dir = use_machine(monkeypatch, tmp_path / "offline")

    assert main(["models", "install", str(bad)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{weights} does not match its sha256 in the manifest" in line and "nothing was installed" in line
    assert not any(p.name in ("biomedclip", "clap-htsat-fused") for p in models_dir.iterdir())
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".install-")]  # no staging left behind

    extra = write_pack(tmp_path / "extra.tar", manifest, {**members, "biomedclip/run.sh": b"#!/bin/sh\n"})
    assert main(["models", "install", str(extra)]) == 1
    assert "biomedclip/run.sh is not in the pack's manifest" in one_error_line(capsys.readouterr().err)

    escape = write_pack(tmp_path / "escape.tar", manifest, {**members, "../outside.txt": b"x"})
    assert main(["models", "install", str(escape)]) == 1
    assert "../outside.txt is not in the pack's manifest" in one_error_line(capsys.readouterr().err)
    assert not (models_dir.parent / "outside.txt").exists()

    missing = write_pack(tmp_path / "missing.tar", manifest, {k: v for k, v in members.items() if k != weights})
    assert main(["models", "install", str(missing)]) == 1
    assert f"{weights} is listed in the manifest but not in the pack" in one_error_line(capsys.readouterr().err)

    notes = tmp_path / "notes.tar"
    notes.write_text("not a tar file\n")
    assert main(["models", "install", str(notes)]) == 1
    assert "notes.tar is not a model pack" in one_error_line(capsys.readouterr().err)
    assert main(["models", "install", str(tmp_path / "nowhere.tar")]) == 1
    assert "model pack not found" in one_error_line(capsys.readouterr().err)
    assert registry.availability(modality="image").available is False  # still missing: nothing half-installed


def test_a_file_changed_after_install_is_caught_by_verify_and_on_load(pack_tar, tmp_path, monkeypatch, capsys):
    models_dir = use_machine(monkeypatch, tmp_path / "offline")
    assert main(["models", "install", str(pack_tar)]) == 0
    capsys.readouterr()
    weights = models_dir / "biomedclip" / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))

    assert main(["models", "verify", "--no-load"]) == 1
    out, err = capsys.readouterr()
    assert "ok clap-htsat-fused: checksums match" in out
    line = one_error_line(err)
    assert "biomedclip: open_clip_model.safetensors does not match its sha256 in the manifest" in line

    found = registry.availability(modality="image")
    assert not found.available and found.location.kind == "pack" and "damaged" in found.reason
    with pytest.raises(medzero.ModelUnavailableError, match="installed model pack biomedclip .* is damaged"):
        registry.create("biomedclip", modality="image", device="cpu")


def test_verify_notices_a_loader_whose_preprocessing_differs_from_the_pack(pack_tar, tmp_path, monkeypatch, capsys):
    """open_clip #1068: a local load silently used other preprocessing. The pack records what the
    loader applied where it was made; verify loads the model here and compares."""
    models_dir = use_machine(monkeypatch, tmp_path / "offline")
    assert main(["models", "install", str(pack_tar)]) == 0
    record_path = models_dir / "biomedclip" / "medzero-model.json"
    record = json.loads(record_path.read_text())
    record["preprocess"]["mean"] = [0.5, 0.5, 0.5]  # as if made where the loader normalised differently
    record["preprocess"]["image_size"] = [224, 224]
    record_path.write_text(json.dumps(record))
    capsys.readouterr()

    assert main(["models", "verify", "biomedclip"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "biomedclip: the loader's preprocessing differs from the pack's" in line
    assert "image_size [160, 160] instead of [224, 224]" in line and "mean [0.48145466" in line

    assert main(["models", "verify", "no-such-pack"]) == 1
    assert "no installed model pack named no-such-pack" in one_error_line(capsys.readouterr().err)


def test_install_from_an_upload_and_from_a_model_folder(pack_tar, tmp_path, monkeypatch, tiny_clap_dir):
    """What the app does with an uploaded pack (a file object) and with a folder path on the server."""
    use_machine(monkeypatch, tmp_path / "offline")
    with open(pack_tar, "rb") as fh:
        upload = io.BytesIO(fh.read())
    upload.name = "models.tar"
    done = medzero.install_model_pack(upload)
    assert sorted(p.name for p in done) == ["biomedclip", "clap-htsat-fused"]
    assert all(p.manifest["pack"] == "models.tar" for p in done)

    use_machine(monkeypatch, tmp_path / "other")
    (folder,) = medzero.install_model_pack(tiny_clap_dir, name="clap-htsat-fused", modality="audio")
    assert folder.name == "clap-htsat-fused" and folder.manifest["source_kind"] == "directory"
    assert set(folder.manifest["files"]) == CLAP_FILES
    found = medzero.model_availability(modality="audio")
    assert found.available and found.location.kind == "pack" and found.where == str(folder.path)


def test_packing_a_model_that_is_not_here_fails_with_one_line(tmp_path, monkeypatch, capsys):
    use_machine(monkeypatch, tmp_path / "connected")
    out = tmp_path / "models.tar"
    assert main(["models", "pack", "clap-htsat-fused", "-o", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "clap-htsat-fused (laion/clap-htsat-fused) is not available offline" in line
    assert not out.exists() and not list(tmp_path.glob(".models.tar.tmp*"))
    assert main(["models", "pack", str(tmp_path / "no-such-folder"), "-o", str(out)]) == 1
    assert "not found" in one_error_line(capsys.readouterr().err)


def _hub_cache(root: Path, repo: str, source: Path) -> Path:
    """A Hugging Face hub cache holding ``source``'s files as ``repo`` at ``COMMIT`` (refs/main too)."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return root


def test_a_pack_from_the_hub_cache_records_the_commit(tmp_path, monkeypatch, tiny_clap_dir, capsys):
    """`medzero models pack clap-htsat-fused` where the registry finds it in the Hugging Face cache
    (a subprocess: the hub libraries read HF_HUB_CACHE when they are imported)."""
    hub_cache = _hub_cache(tmp_path / "hub", "laion/clap-htsat-fused", tiny_clap_dir)
    out = tmp_path / "clap.tar"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDZERO_", "HF_"))}
    env.update(HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1", MEDZERO_CACHE_DIR=str(tmp_path / "connected"))
    run = subprocess.run([sys.executable, "-m", "medzero.cli", "models", "pack", "clap-htsat-fused", "-o", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (entry,) = read_pack(out)[0]["models"]
    assert entry["source_kind"] == "hub" and entry["source"] == "laion/clap-htsat-fused"
    assert entry["revision"] == COMMIT and entry["fingerprint"] == f"laion/clap-htsat-fused@{COMMIT}"
    assert entry["licence"]["id"] == "apache-2.0"
    assert set(entry["files"]) == CLAP_FILES

    use_machine(monkeypatch, tmp_path / "offline")
    assert main(["models", "install", str(out)]) == 0
    capsys.readouterr()
    # Found by its name and by the hub id it was packed from, with the hub identity kept.
    for ref in ("clap-htsat-fused", "laion/clap-htsat-fused"):
        assert registry.create(ref, modality="audio", device="cpu").fingerprint == f"laion/clap-htsat-fused@{COMMIT}"
    # A pinned revision the pack does not hold is not served from it.
    monkeypatch.setenv("MEDZERO_CLAP_HTSAT_FUSED_REVISION", "f" * 40)
    assert not registry.availability("clap-htsat-fused", modality="audio").available
