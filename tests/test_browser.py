"""End to end in a real headless Chromium (Playwright, sync API): what AppTest cannot cover.

The app runs in a subprocess (once per module) with the command line ``medzero app`` uses
(``medzero.app.command``) and the tiny test checkpoints; the browser uploads real files, presses
the buttons and reads what the page shows.
Each test saves a full-page screenshot under its ``tmp_path`` for a person to look at.

Needs the Debian ``chromium`` package (``/usr/bin/chromium``); Playwright's own browser download is
never used.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import medzero
import medzero.app

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
#: First use of a page loads a model and builds its task head: generous, but bounded.
RESULT_TIMEOUT_MS = int(os.environ.get("MEDZERO_TEST_RESULT_TIMEOUT_MS", 180_000))
STARTUP_TIMEOUT_S = 90
#: Text of the last element each page draws for a result.
VOICE_LAST = "Mel spectrogram ("
XRAY_LAST = "red rows set the triage level"

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(env_overrides: dict[str, str], log_path: Path, *, timeout_s: float = STARTUP_TIMEOUT_S):
    """Start the app as ``medzero app`` does (``medzero.app.command``) on a free port, from ``log_path``'s
    folder; returns (process, base URL) once healthy."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_overrides}
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        medzero.app.command(["--server.fileWatcherType", "none"], port=port, host="127.0.0.1"),
        cwd=log_path.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.3)
    stop_app(proc)
    raise RuntimeError(f"the app did not answer /_stcore/health within {timeout_s:.0f} s:\n{log_path.read_text(errors='replace')[-3000:]}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def launch_browser(playwright):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("the browser tests need Debian's chromium (apt-get install chromium); playwright install is not used")
    return playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)


@pytest.fixture(scope="module")
def app_url(tiny_clap_dir, tiny_hf_clip_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("browser-app")
    proc, base = start_app(
        {
            "MEDZERO_AUDIO_MODEL": str(tiny_clap_dir),
            "MEDZERO_IMAGE_MODEL": f"local-dir:{tiny_hf_clip_dir}",
            "MEDZERO_CACHE_DIR": str(work / "cache"),
        },
        work / "streamlit.log",
    )
    yield base
    stop_app(proc)


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.get_by_text("Research tool, not a diagnosis").wait_for()


def upload(page, files, shown: str) -> None:
    """Choose ``files`` in the page's file uploader; wait until ``shown`` is listed and the rerun is over."""
    page.locator('input[type="file"]').first.set_input_files(files)
    page.get_by_text(shown).first.wait_for()
    page.wait_for_timeout(500)  # let the rerun the upload triggers begin
    wait_idle(page)


def screenshot(page, path: Path) -> None:
    """A full-page screenshot: Streamlit scrolls inside its main block, so grow the viewport to fit it first."""
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], [data-testid=\"stMainBlockContainer\"]')]"
        ".map(e => e.scrollHeight), document.body.scrollHeight)"
    )
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 600, 12000)})
    page.wait_for_timeout(300)
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size(size)


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


def headings(page) -> list[str]:
    return [h.strip() for h in page.locator('[data-testid="stMain"] h1').all_inner_texts()]


def wait_idle(page, timeout_ms: int = RESULT_TIMEOUT_MS) -> None:
    """Wait until the script run is over (Streamlit's "Running…" status widget is gone)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout_ms,
    )


def classify_and_wait(page, last: str) -> None:
    """Press Classify; wait for ``last`` (text of the result's last element) and the end of the run."""
    page.get_by_role("button", name="Classify").click()
    page.get_by_text(last).first.wait_for(timeout=RESULT_TIMEOUT_MS)
    wait_idle(page)


def test_voice_upload_classify_shows_verdict_and_every_label(page, app_url, audio_clips, tmp_path):
    open_page(page, app_url)
    upload(page, str(audio_clips["speech"]), "speech.wav")
    classify_and_wait(page, VOICE_LAST)
    task = medzero.load_task("voice_quality")
    shown = headings(page)
    assert any(h in {v.display("en") for v in task.verdicts} for h in shown), shown
    text = main_text(page)
    for label in task.labels:
        assert label.display("en") in text, label.id
    assert "Signal-to-noise ratio" in text
    assert page.locator('[data-testid="stAudio"], audio').count() >= 1
    assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 2  # scores and waveform
    screenshot(page, tmp_path / "voice.png")

    page.get_by_text("中文").click()  # the language switch re-labels the same result
    page.get_by_text(task.labels[0].display("zh")).first.wait_for()
    shown = headings(page)
    assert any(h in {v.display("zh") for v in task.verdicts} for h in shown), shown
    screenshot(page, tmp_path / "voice_zh.png")


def test_the_timeline_legend_shows_every_label_inside_the_chart(page, app_url, audio_clips, tmp_path):
    """A long recording's timeline names every label in its legend, whole and inside the chart
    (beside a fixed-height chart the legend was cut off after about seven of the ten)."""
    import audio_samples

    long = audio_samples.long_speech(tmp_path, 60, speech=audio_clips["speech"])
    open_page(page, app_url)
    upload(page, str(long), long.name)
    page.get_by_role("button", name="Classify").click()
    page.get_by_text("Timeline").first.wait_for(timeout=RESULT_TIMEOUT_MS)
    wait_idle(page)
    chart = page.locator('[data-testid="stVegaLiteChart"]').last  # the timeline is the page's last chart
    chart.scroll_into_view_if_needed()
    labels = chart.locator(".role-legend-label text")
    playwright_sync.expect(labels.first).to_be_visible()
    screenshot(page, tmp_path / "timeline.png")
    box = chart.bounding_box()
    names = [labels.nth(i).text_content() for i in range(labels.count())]
    assert sorted(names) == sorted(label.display("en") for label in medzero.load_task("voice_quality").labels)
    for i, name in enumerate(names):
        shown = labels.nth(i).bounding_box()
        assert box["y"] <= shown["y"] and shown["y"] + shown["height"] <= box["y"] + box["height"] + 1, (name, shown, box)


def test_xray_dicom_classify_shows_triage_and_findings(page, app_url, dicom_files, tmp_path):
    open_page(page, f"{app_url}/xray")
    upload(page, str(dicom_files["phi"]), "phi.dcm")
    page.get_by_text("PHI-free").wait_for()
    text = main_text(page)
    for secret in ("Doe^Jane", "MRN-99812345", "Saint Example", "19510317"):
        assert secret not in text
    # a radiograph is offered windows on its own values, never the CT presets in Hounsfield units
    assert page.get_by_text("lung (C -600 / W 1500 HU)").count() == 0
    page.get_by_text("contrast (1st to 99th percentile)").click()  # a window choice redraws the image
    page.wait_for_timeout(300)
    wait_idle(page)
    classify_and_wait(page, XRAY_LAST)
    task = medzero.load_task("chest_xray_findings")
    shown = headings(page)
    assert any(h in {v.display("en") for v in task.verdicts} for h in shown), shown
    assert "Triage level" in main_text(page)
    table = page.locator('[data-testid="stTable"]').filter(has_text="Finding").first.inner_text()
    for label in task.labels:
        assert label.display("en") in table, label.id
    assert "Threshold" in table and "Positive" in table
    screenshot(page, tmp_path / "xray.png")


def test_bad_file_shows_error_and_page_still_works(page, app_url, audio_clips, tmp_path):
    open_page(page, app_url)
    upload(page, {"name": "notes.wav", "mimeType": "audio/wav", "buffer": b"Patient notes, not a recording.\n" * 50}, "notes.wav")
    page.get_by_role("button", name="Classify").click()
    error = page.locator('[data-testid="stAlertContentError"]').filter(has_text="Could not classify notes.wav")
    error.wait_for(timeout=RESULT_TIMEOUT_MS)
    assert page.locator('[data-testid="stException"]').count() == 0  # an error box, never a traceback
    screenshot(page, tmp_path / "bad_file.png")

    upload(page, str(audio_clips["speech"]), "speech.wav")
    classify_and_wait(page, VOICE_LAST)
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    screenshot(page, tmp_path / "after_bad_file.png")


def test_case_search_add_both_files_and_search_by_text(page, app_url, audio_clips, dicom_files, tmp_path):
    open_page(page, f"{app_url}/search")
    page.get_by_label("Name of the new index").fill(f"browser-{tmp_path.name}")
    page.get_by_label("Name of the new index").press("Enter")
    wait_idle(page)
    upload(page, [str(audio_clips["speech"]), str(dicom_files["phi"])], "phi.dcm")
    page.get_by_role("button", name="Add uploaded files").click()
    try:
        page.get_by_text("Added 2").wait_for(timeout=RESULT_TIMEOUT_MS)
    except Exception:
        screenshot(page, tmp_path / "search_add_failed.png")
        raise
    page.get_by_text("2 cases").wait_for()

    query = page.get_by_label("Describe what you are looking for")
    query.fill("a person speaking")
    query.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Search").click()
    page.get_by_text("2 hit(s)").wait_for(timeout=RESULT_TIMEOUT_MS)
    cards = page.get_by_text(re.compile(r"score -?[0-9.]+ · (audio|image)"))
    playwright_sync.expect(cards).to_have_count(2, timeout=RESULT_TIMEOUT_MS)
    main = page.locator('[data-testid="stMain"]')
    playwright_sync.expect(main.locator('[data-testid="stImage"] img')).to_have_count(1)  # the X-ray's thumbnail
    playwright_sync.expect(main.locator('[data-testid="stAudio"]')).to_have_count(1)  # the recording's player
    wait_idle(page)
    text = main_text(page)
    assert "speech.wav" in text and "phi.dcm" in text
    screenshot(page, tmp_path / "search.png")
