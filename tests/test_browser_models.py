"""In a real browser: the missing-model banner and installing a pack by upload; the page in Chinese,
kept in the address across reloads and pages.

The app (started as ``medzero app`` starts it, with the helpers of ``test_browser.py``) has its audio
model as a local folder and no image model: the registered default is neither installed nor in the
(empty) Hugging Face cache, and the hub is off. Screenshots are saved under each test's ``tmp_path``.
"""
from __future__ import annotations

import re

import pytest

import medzero
from test_browser import (  # noqa: F401 - browser and page are fixtures
    RESULT_TIMEOUT_MS,
    browser,
    classify_and_wait,
    headings,
    main_text,
    page,
    screenshot,
    start_app,
    stop_app,
    wait_idle,
)

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

pytestmark = pytest.mark.timeout(600)

MISSING_IMAGE = "The image model is not on this machine."
XRAY_LAST = "red rows set the triage level"


@pytest.fixture(scope="module")
def offline_app(tiny_clap_dir, tiny_hf_clip_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("browser-models")
    pack = work / "usb" / "biomedclip.tar"
    medzero.pack_models([f"biomedclip={tiny_hf_clip_dir}"], pack)  # made "on a connected machine"
    proc, base = start_app(
        {
            "MEDZERO_AUDIO_MODEL": str(tiny_clap_dir),
            "MEDZERO_IMAGE_MODEL": "",  # the registered default (empty means unset to the library)
            "MEDZERO_CACHE_DIR": str(work / "cache"),
            "HF_HOME": str(work / "hf-home"),  # an empty Hugging Face cache
        },
        work / "streamlit.log",
    )
    yield base, pack
    stop_app(proc)


def _missing_banner(page):
    return page.locator('[data-testid="stAlertContentError"]').filter(has_text=MISSING_IMAGE)


def test_missing_model_banner_then_install_by_upload(page, offline_app, dicom_files, tmp_path):
    base, pack = offline_app
    page.goto(f"{base}/xray")
    banner = _missing_banner(page)
    banner.wait_for()
    text = banner.inner_text()
    assert "biomedclip" in text and "Classify is off until then." in text
    box = page.locator(".st-key-xray_missing_model")
    assert "--" not in box.inner_text() and "hf download" not in box.inner_text()  # the app's own advice, no CLI flags
    expect(page.get_by_role("button", name="Classify")).to_be_disabled()
    screenshot(page, tmp_path / "banner.png")

    page.locator(".st-key-xray_pack_upload_0 input[type=file]").set_input_files(str(pack))
    page.get_by_text("biomedclip.tar").first.wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Install the uploaded pack").click()
    page.get_by_text("Installed biomedclip (image).").wait_for(timeout=RESULT_TIMEOUT_MS)
    wait_idle(page)
    expect(_missing_banner(page)).to_have_count(0)
    screenshot(page, tmp_path / "installed.png")

    page.locator(".st-key-xray_file input[type=file]").set_input_files(str(dicom_files["phi"]))
    page.get_by_text("phi.dcm").first.wait_for()
    page.wait_for_timeout(500)
    wait_idle(page)
    classify_and_wait(page, XRAY_LAST)
    task = medzero.load_task("chest_xray_findings")
    assert any(h in {v.display("en") for v in task.verdicts} for h in headings(page))
    screenshot(page, tmp_path / "classified.png")


def test_the_whole_page_follows_the_language_switch_and_keeps_it_in_the_address(page, offline_app, tmp_path):
    base, _ = offline_app
    page.goto(f"{base}/?lang=zh")
    page.get_by_role("heading", name="语音质量").wait_for()
    wait_idle(page)
    sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    for title in ("语音质量", "胸部 X 光", "病例检索", "模型"):
        assert title in sidebar
    text = main_text(page)
    for english in ("Voice quality", "Research tool", "Upload or record", "Upload a file", "Task", "Classify", "Recording ("):
        assert english not in text, english
    expect(page.get_by_role("button", name="分类")).to_be_visible()
    screenshot(page, tmp_path / "voice_zh.png")

    page.get_by_text("English", exact=True).click()
    page.get_by_role("heading", name="Voice quality").wait_for()
    expect(page).to_have_url(re.compile(r"[?&]lang=en\b"))

    page.get_by_text("中文", exact=True).click()
    page.get_by_text("研究工具，不是诊断。").wait_for()
    expect(page).to_have_url(re.compile(r"[?&]lang=zh\b"))
    page.reload()  # a reload starts a new session: the address carries the language
    page.get_by_role("heading", name="语音质量").wait_for()
    wait_idle(page)
    assert "Research tool" not in main_text(page)

    page.locator('[data-testid="stSidebarNav"]').get_by_text("胸部 X 光").click()  # another page keeps it too
    page.get_by_role("heading", name="胸部 X 光").wait_for()
    # the uploader can render after the heading on a loaded machine (CI once read the page between them)
    page.get_by_text("上传 DICOM、PNG 或 JPEG 图像").first.wait_for()
    wait_idle(page)
    expect(page).to_have_url(re.compile(r"/xray\?(.*&)?lang=zh\b"))
    text = main_text(page)
    assert "上传 DICOM、PNG 或 JPEG 图像" in text and "Upload a DICOM" not in text
    screenshot(page, tmp_path / "xray_zh.png")
