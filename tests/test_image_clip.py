"""The open_clip encoder: loading through medzero's registry, preprocessing identity, and scores
equal to open_clip's own zero-shot computation, for a CLIP-style and a BiomedCLIP-style checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_image import *  # noqa: F401,F403
from medzero.core.contracts import Encoder
from medzero.encoders import factory as registry
from medzero.encoders.registry import list_models
from medzero.core.errors import ModelUnavailableError
from medzero.tasks.schema import task_from_labels
from medzero.tasks.scoring import build_head
from medzero.image import read_image
from medzero.image.clip import OpenClipEncoder

LABELS = {
    "tiny_clip_dir": ["normal chest", "pneumonia", "pleural effusion"],
    "tiny_hf_clip_dir": ["normal lung", "pneumonia", "pleural effusion"],  # words of the tiny BERT vocabulary
}


@pytest.fixture(params=["tiny_clip_dir", "tiny_hf_clip_dir"])
def checkpoint(request):
    return request.param, request.getfixturevalue(request.param)


def test_create_local_dir(checkpoint, isolated_cache):
    name, path = checkpoint
    enc = registry.create(f"local-dir:{path}", modality="image", device="cpu")
    assert isinstance(enc, OpenClipEncoder) and isinstance(enc, Encoder)
    assert enc.modality == "image" and enc.dim == 32 and enc.device == "cpu"
    assert enc.fingerprint.startswith(f"local-dir:{path.name}:")
    assert enc.logit_scale == pytest.approx(float(enc.model.logit_scale.detach().exp()), rel=1e-6)
    assert enc.logit_scale == pytest.approx(1 / 0.07 if name == "tiny_clip_dir" else 100.0, rel=1e-5)
    # A plain directory resolves to the same model; create() caches per reference.
    plain = registry.create(str(path), modality="image", device="cpu")
    assert plain.fingerprint == enc.fingerprint
    assert registry.create(f"local-dir:{path}", modality="image", device="cpu") is enc


def test_embeddings_are_normalised(checkpoint, image_files, dicom_files, isolated_cache):
    _, path = checkpoint
    enc = registry.create(f"local-dir:{path}", modality="image", device="cpu")
    enc.batch_size = 2  # exercise the prefetching batch loop
    items = [read_image(image_files["rgb.png"]), read_image(dicom_files["ct"]), read_image(image_files["gray16.png"]),
             Image.open(image_files["photo.jpg"]), read_image(dicom_files["rgb"])]
    emb = enc.embed(items)
    assert emb.shape == (5, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([enc.embed([item]) for item in items])
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)
    text = enc.embed_text(["pneumonia", "normal lung"])
    assert text.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert enc.embed([]).shape == (0, 32)


@pytest.mark.parametrize("name", ["rgb.png", "photo.jpg", "gray8.png"])
def test_eight_bit_images_reach_preprocess_pixel_identical(tiny_clip_dir, image_files, isolated_cache, name):
    enc = registry.create(f"local-dir:{tiny_clip_dir}", modality="image", device="cpu")
    ours = enc.preprocess_batch([read_image(image_files[name])])[0]
    reference = enc.preprocess(Image.open(image_files[name]).convert("RGB"))
    assert torch.equal(ours, reference)


def test_scores_equal_open_clip_zero_shot(checkpoint, image_files, isolated_cache):
    name, path = checkpoint
    labels = LABELS[name]
    enc = registry.create(f"local-dir:{path}", modality="image", device="cpu")
    task = task_from_labels(labels, modality="image", template="{}")
    ours = build_head(task, enc).scores(enc.embed([read_image(image_files["rgb.png"])]))

    # open_clip's own computation, from its own objects.
    model, preprocess, tokenizer = enc.model, enc.preprocess, enc.tokenizer
    with torch.no_grad():
        image = model.encode_image(preprocess(Image.open(image_files["rgb.png"]).convert("RGB")).unsqueeze(0))
        text = model.encode_text(tokenizer(labels))
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        reference = (model.logit_scale.exp() * image @ text.T).softmax(dim=-1).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert float(reference.max() - reference.min()) > 1e-3  # the labels are told apart


def test_text_cache_is_keyed_by_fingerprint(tiny_clip_dir, tiny_hf_clip_dir, isolated_cache):
    a = registry.create(f"local-dir:{tiny_clip_dir}", modality="image", device="cpu")
    b = registry.create(f"local-dir:{tiny_hf_clip_dir}", modality="image", device="cpu")
    assert a.fingerprint != b.fingerprint
    task = task_from_labels(["pneumonia", "normal lung"], modality="image", template="{}")
    assert not np.allclose(build_head(task, a).positives, build_head(task, b).positives)


def test_registered_models_unavailable_offline_name_the_model(monkeypatch, isolated_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = list_models("image")
    assert {m.name for m in models} >= {"biomedclip", "vit-b-16-openai"}
    assert [m.name for m in models if m.default] == ["biomedclip"]
    for cfg in models:
        with pytest.raises(ModelUnavailableError) as info:
            registry.create(cfg.name, modality="image", device="cpu")
        message = str(info.value)
        assert "\n" not in message and cfg.name in message and "local-dir:" in message


@pytest.mark.parametrize(
    "ref,match",
    [
        ("hf-hub:nobody/not-a-model", "not available"),
        ("ViT-B-16", "without weights"),
        ("ViT-B-16@no-such-tag", "no pretrained tag"),
        ("Not-An-Arch@openai", "unknown image model"),
        ("local-dir:/nonexistent/folder", "does not exist"),
    ],
)
def test_bad_references(ref, match, monkeypatch, isolated_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match=match) as info:
        registry.create(ref, modality="image", device="cpu")
    assert "\n" not in str(info.value)


def test_local_dir_without_weights_is_refused(tiny_clip_dir, tmp_path, isolated_cache):
    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(ModelUnavailableError, match="holds no weights"):
        registry.create(f"local-dir:{folder}", modality="image", device="cpu")


@pytest.mark.parametrize(
    "name", ["chest_xray_findings", "chest_xray_quality", "chest_xray_covid", "skin_lesion", "histopathology"]
)
def test_shipped_image_tasks_score(name, tiny_clip_dir, image_files, isolated_cache):
    from pathlib import Path

    from medzero.tasks.schema import load_task_file
    from medzero.tasks.scoring import evaluate

    task = load_task_file(Path(__file__).resolve().parents[1] / "prompts" / f"{name}.yaml")
    assert task.modality == "image"
    enc = registry.create(f"local-dir:{tiny_clip_dir}", modality="image", device="cpu")
    head = build_head(task, enc)
    scores = head.scores(enc.embed([read_image(image_files["gray8.png"])]))
    assert scores.shape == (1, len(task.labels))
    if task.mode == "multiclass":
        assert scores.sum() == pytest.approx(1.0, abs=1e-6)
    verdict, _ = evaluate(task, head.as_dict(scores[0]))
    assert verdict in [v.id for v in task.verdicts]
