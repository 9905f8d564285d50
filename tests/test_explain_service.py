"""``POST /v1/explain`` on a real server (uvicorn in a subprocess, loopback): an image's result with
a heatmap per label equal to the library's, each with a PNG overlay; a recording and a bad method
answered 4xx in one line."""
from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest

import medzero
from test_explain import LABELS, chest_png  # noqa: F401 - the module fixture
from test_service import REPO, start_server, stop_server


@pytest.fixture(scope="module")
def explain_server(tiny_clip_dir, tiny_clap_dir, tmp_path_factory):
    env = dict(os.environ)
    env.update(
        MEDZERO_AUDIO_MODEL=str(tiny_clap_dir), MEDZERO_IMAGE_MODEL=f"local-dir:{tiny_clip_dir}", MEDZERO_BACKEND="torch",
        MEDZERO_CACHE_DIR=str(tmp_path_factory.mktemp("explain-cache")), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
    )
    env.pop("MEDZERO_API_KEYS", None)
    server = start_server(tmp_path_factory.mktemp("explain-service"), ["--insecure-no-auth", "--timeout", "120"], env)
    yield server
    stop_server(server)


def test_explain_returns_the_library_maps_and_png_overlays(explain_server, tiny_clip_dir, chest_png):  # noqa: F811
    from PIL import Image

    with explain_server.client(token=None, timeout=120) as client:
        response = client.post("/v1/explain", params={"labels": ",".join(LABELS)}, content=chest_png.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body["explanations"]) == LABELS
    expected = medzero.Classifier(labels=LABELS, image_model=f"local-dir:{tiny_clip_dir}", backend="torch").classify(
        chest_png, explain=True)
    for label, served in body["explanations"].items():
        assert served["method"] == "occlusion"
        np.testing.assert_allclose(served["grid"], expected.explanations[label]["grid"], atol=1e-5)
        assert served["region"] == pytest.approx(expected.explanations[label]["region"])
        assert body["result"]["scores"][label] == pytest.approx(expected.scores[label], abs=1e-6)
        picture = Image.open(io.BytesIO(base64.b64decode(served["png"])))
        assert picture.format == "PNG" and picture.size[0] == 200


def test_explain_refuses_a_recording_and_a_bad_method_in_one_line(explain_server, audio_clips, chest_png):  # noqa: F811
    with explain_server.client(token=None, timeout=120) as client:
        audio = client.post("/v1/explain", params={"labels": ",".join(LABELS)}, content=audio_clips["wav"].read_bytes())
        bad = client.post("/v1/explain", params={"labels": ",".join(LABELS), "method": "saliency"},
                          content=chest_png.read_bytes())
    assert audio.status_code == 422 and audio.json()["error"] == "not_explainable"
    assert "heatmaps are for images" in audio.json()["detail"] and "\n" not in audio.json()["detail"]
    assert bad.status_code == 422, bad.text
    assert "Traceback" not in explain_server.log()
