"""Per-finding image heatmaps (medzero.image.explain) through the library: the deletion test, the
model-randomisation test, identical maps across runs and processes, the geometry of the region,
and hostile inputs. Real tiny open_clip checkpoints (tests/fixtures_image.py), no stand-ins."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures_image import _MEAN, _STD, build_open_clip_checkpoint, chest_pixels

import medzero
from medzero.image.explain import Explanation, input_region, overlay_png

LABELS = ["pneumonia", "pleural effusion", "normal chest"]
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PREPROCESS = {"mean": _MEAN, "std": _STD, "interpolation": "bicubic", "resize_mode": "shortest"}


@pytest.fixture(scope="module")
def chest_png(tmp_path_factory) -> Path:
    """A portrait chest-like picture (200×256), so the centre crop cuts the top and bottom."""
    from PIL import Image

    rng = np.random.default_rng(3)
    pixels = chest_pixels(256)[:, 28:228].astype(np.float64)
    pixels[150:190, 40:80] = 250  # a bright blob in the left lung field
    path = tmp_path_factory.mktemp("explain") / "chest.png"
    Image.fromarray(np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def other_seed_dir(tmp_path_factory) -> Path:
    """The tiny CLIP's architecture with weights initialised from another seed."""
    return build_open_clip_checkpoint(tmp_path_factory.mktemp("tiny_clip_seed7"), TINY_CFG, PREPROCESS, seed=7)


def classifier(model_dir: Path) -> medzero.Classifier:
    return medzero.Classifier(labels=LABELS, image_model=f"local-dir:{model_dir}", backend="torch")


def hide_cells(path: Path, explanation: Explanation, cells: list[int]) -> np.ndarray:
    """The original picture with the given cells of the map (in the original pixel frame, through
    ``region``) painted in the model's mean pixel."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    rows, cols = explanation.grid.shape
    x0, y0, x1, y1 = explanation.region
    mean = np.round(np.asarray(_MEAN) * 255).astype(np.uint8)
    for cell in cells:
        r, c = divmod(int(cell), cols)
        top, bottom = y0 + (y1 - y0) * r / rows, y0 + (y1 - y0) * (r + 1) / rows
        left, right = x0 + (x1 - x0) * c / cols, x0 + (x1 - x0) * (c + 1) / cols
        pixels[max(0, round(top)) : max(0, round(bottom)), max(0, round(left)) : max(0, round(right))] = mean
    return pixels


@pytest.mark.parametrize("method", ["auto", "occlusion", "gradient"])
def test_deletion_hiding_the_top_region_lowers_the_score_more_than_random_regions(tiny_clip_dir, chest_png, method):
    """For each label: hide the 10% of cells its map ranks highest (in the original image, where
    ``region`` says the model input sits) and classify again; the score falls further than when as
    many random cells are hidden (mean over 12 random draws). Averaged over the labels.

    Ranking the cells lowest-first instead fails this test, for either method."""
    clf = classifier(tiny_clip_dir)
    result = clf.classify(chest_png, explain=method)
    assert set(result.explanations) == set(LABELS)
    rng = np.random.default_rng(0)
    gaps = []
    for label in LABELS:
        explanation = Explanation.from_dict(label, result.explanations[label])
        assert explanation.method == ("occlusion" if method == "auto" else method)
        grid = explanation.grid
        assert grid.shape == ((4, 4) if method == "gradient" else (7, 7))  # the ViT's patch grid; occlusion's cells
        k = max(1, grid.size // 10)
        top = list(np.argsort(-grid.ravel(), kind="stable")[:k])
        base = result.scores[label]
        top_drop = base - clf.classify(hide_cells(chest_png, explanation, top)).scores[label]
        random_drops = [
            base - clf.classify(hide_cells(chest_png, explanation, list(rng.choice(grid.size, k, replace=False)))).scores[label]
            for _ in range(12)
        ]
        gaps.append(top_drop - float(np.mean(random_drops)))
    assert np.mean(gaps) > 0, gaps


def test_model_randomisation_changes_the_maps(tiny_clip_dir, other_seed_dir, chest_png):
    """The same architecture, image and labels with weights from another seed: other maps."""
    first = classifier(tiny_clip_dir).classify(chest_png, explain=True).explanations
    second = classifier(other_seed_dir).classify(chest_png, explain=True).explanations
    for label in LABELS:
        a, b = np.asarray(first[label]["grid"]).ravel(), np.asarray(second[label]["grid"]).ravel()
        assert a.shape == b.shape
        assert np.corrcoef(a, b)[0, 1] < 0.9, label
        assert first[label]["region"] == second[label]["region"]  # the geometry is the preprocessing's, not the weights'


def test_identical_maps_across_runs_and_processes(tiny_clip_dir, chest_png):
    clf = classifier(tiny_clip_dir)
    first = clf.classify(chest_png, explain=True).to_dict()["explanations"]
    again = clf.classify(chest_png, explain=True).to_dict()["explanations"]
    assert first == again
    script = (
        "import json, medzero; "
        f"c = medzero.Classifier(labels={LABELS!r}, image_model='local-dir:{tiny_clip_dir}', backend='torch'); "
        f"print(json.dumps(c.classify({str(chest_png)!r}, explain=True).to_dict()['explanations']))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(first))


def test_region_is_the_centre_crop_in_the_original_pixel_frame(tiny_clip_dir, chest_png):
    """A 200×256 portrait through resize-shortest-to-64 and a 64×64 centre crop: the map covers the
    full width and the middle 200 rows (give or take the resize's rounding)."""
    result = classifier(tiny_clip_dir).classify(chest_png, explain=True)
    x0, y0, x1, y1 = result.explanations["pneumonia"]["region"]
    assert (x0, x1) == pytest.approx((0.0, 200.0))
    assert abs(y0 - 28) < 4 and abs(y1 - 228) < 4
    assert result.explanations["pneumonia"]["image_size"] == [200, 256]
    assert not classifier(tiny_clip_dir).classify(chest_png).explanations  # only when asked


def test_region_of_a_letterboxed_input_reaches_past_the_image():
    """resize_mode 'longest' pads: the region extends beyond the short side, centred."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess = image_transform_v2(PreprocessCfg(size=(224, 224), resize_mode="longest"), is_train=False)
    x0, y0, x1, y1 = input_region(preprocess, 400, 200)
    assert (x0, x1) == pytest.approx((0.0, 400.0))
    assert y0 == pytest.approx(-100, abs=2) and y1 == pytest.approx(300, abs=2)
    squash = image_transform_v2(PreprocessCfg(size=(224, 224), resize_mode="squash"), is_train=False)
    assert input_region(squash, 400, 200) == pytest.approx((0.0, 0.0, 400.0, 200.0))


def test_overlay_png_is_a_picture_of_the_image_size_bounded(tiny_clip_dir, chest_png):
    from io import BytesIO

    from PIL import Image

    result = classifier(tiny_clip_dir).classify(chest_png, explain=True)
    explanation = Explanation.from_dict("pneumonia", result.explanations["pneumonia"])
    png = overlay_png(Image.open(chest_png), explanation, title="pneumonia 0.42")
    picture = Image.open(BytesIO(png))
    picture.verify()
    assert picture.format == "PNG" and picture.size[0] == 200 and picture.size[1] > 256  # + the caption band


def test_unknown_method_is_a_one_line_error(tiny_clip_dir, chest_png):
    with pytest.raises(medzero.MedzeroError, match="unknown explanation method 'saliency'"):
        classifier(tiny_clip_dir).classify(chest_png, explain="saliency")


def test_gradient_on_an_onnx_export_is_a_one_line_error_and_occlusion_works(tiny_clip_dir, chest_png, isolated_cache):
    clf = medzero.Classifier(labels=LABELS, image_model=f"local-dir:{tiny_clip_dir}", backend="onnx")
    result = clf.classify_batch([chest_png], explain="gradient")[0]
    assert result.error is not None and "torch backend" in result.error and "\n" not in result.error
    maps = clf.classify(chest_png, explain=True).explanations
    torch_maps = classifier(tiny_clip_dir).classify(chest_png, explain=True).explanations
    for label in LABELS:
        assert np.corrcoef(np.ravel(maps[label]["grid"]), np.ravel(torch_maps[label]["grid"]))[0, 1] > 0.99


def test_huge_image_is_decoded_bounded_and_the_region_is_in_its_own_frame(tiny_clip_dir, tmp_path):
    """A 6000×4000 picture: decoded reduced (as without explain), the region in the 6000×4000
    frame (within the reduced decode's rounding of the aspect ratio), the overlay at most 1024
    pixels wide."""
    from io import BytesIO

    from PIL import Image

    path = tmp_path / "huge.png"
    y = np.linspace(0, 1, 4000, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, 6000, dtype=np.float32)[None]
    Image.fromarray(((x + y) * 120).astype(np.uint8)).save(path, compress_level=1)
    result = classifier(tiny_clip_dir).classify(path, explain=True)
    x0, y0, x1, y1 = result.explanations["normal chest"]["region"]
    assert result.explanations["normal chest"]["image_size"] == [6000, 4000]
    assert (y0, y1) == pytest.approx((0.0, 4000.0)) and x0 == pytest.approx(1000, abs=80) and x1 == pytest.approx(5000, abs=80)
    explanation = Explanation.from_dict("normal chest", result.explanations["normal chest"])
    assert Image.open(BytesIO(overlay_png(Image.open(path), explanation))).size[0] == 1024


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_explain_writes_one_png_per_label_per_image_named_safely(tiny_clip_dir, tiny_clap_dir, chest_png, audio_clips,
                                                                    tmp_path, capsys):
    """A folder with an image named after a patient and a recording: three overlay PNGs for the
    image (valid, the image's size plus the caption), none for the recording (a one-line note),
    exit 0; no file name carries the input's name."""
    import shutil

    from PIL import Image

    from medzero.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(chest_png, inputs / "Doe_Jane_1951.png")
    shutil.copy(audio_clips["wav"], inputs / "visit.wav")
    out = tmp_path / "maps"
    code = main(["classify", str(inputs), "--labels", ",".join(LABELS), "--image-model", f"local-dir:{tiny_clip_dir}",
                 "--audio-model", f"local-dir:{tiny_clap_dir}", "--backend", "torch", "--explain", str(out),
                 "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3 and not any("Doe" in name or "Jane" in name for name in pngs), pngs
    listed = json.loads((out / "explanations.json").read_text())
    assert {item["label"] for item in listed} == set(LABELS) and all(item["method"] == "occlusion" for item in listed)
    for name in pngs:
        with Image.open(out / name) as picture:
            picture.verify()
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and picture.size[0] == 200
    assert "no heatmap for 1 input(s)" in captured.err and "Traceback" not in captured.err
    results = json.loads(captured.out)
    image = next(r for r in results if r["modality"] == "image")
    assert set(image["explanations"]) == set(LABELS)
    assert next(r for r in results if r["modality"] == "audio")["explanations"] == {}


def test_cli_explain_with_gradient_on_onnx_fails_in_one_line(tiny_clip_dir, chest_png, tmp_path, capsys, isolated_cache):
    from medzero.cli import main

    code = main(["classify", str(chest_png), "--labels", ",".join(LABELS), "--image-model", f"local-dir:{tiny_clip_dir}",
                 "--backend", "onnx", "--explain", str(tmp_path / "maps"), "--explain-method", "gradient"])
    err = capsys.readouterr().err
    assert code == 1 and "torch backend" in err and "Traceback" not in err
    assert not list((tmp_path / "maps").glob("*.png"))


def test_gradient_on_a_timm_vit_tower_gives_its_patch_grid(tiny_hf_clip_dir, chest_png):
    """The BiomedCLIP layout (timm ViT image tower, BERT text tower): the gradient map sits on the
    ViT's own patch grid, finite, non-negative, not all zero; occlusion on its 7×7 cells."""
    import timm

    clf = medzero.Classifier(labels=LABELS, image_model=f"local-dir:{tiny_hf_clip_dir}", backend="torch")
    maps = clf.classify(chest_png, explain="gradient").explanations
    grid_size = tuple(clf.encoder("image").model.visual.trunk.patch_embed.grid_size)
    for label in LABELS:
        grid = np.asarray(maps[label]["grid"])
        assert grid.shape == grid_size and np.isfinite(grid).all() and (grid >= 0).all() and grid.max() > 0
    assert np.asarray(clf.classify(chest_png, explain="occlusion").explanations["pneumonia"]["grid"]).shape == (7, 7)
    assert timm  # the tower is timm's
