"""``streamlit run streamlit_app.py``: the checkout's top-level entry file runs the packaged app.

Streamlit's own tooling (``streamlit run`` with no argument hints, Community Cloud) looks for
``streamlit_app.py``; it must show the same pages as ``medzero app``, whose entry file is
``medzero/app/main.py``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

import medzero.app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120



def _shown(at: AppTest) -> list[str]:
    return [str(e.value) for kind in ("title", "header", "subheader", "warning") for e in getattr(at, kind)]


def _pages(entry: Path) -> list[list[str]]:
    """What each page of the app started from ``entry`` shows, page by page."""
    shown = []
    for page in ("voice.py", "xray.py", "search.py", "models.py"):
        at = AppTest.from_file(str(entry), default_timeout=TIMEOUT)
        at.run()
        assert not at.exception, at.exception
        at.switch_page(str(medzero.app.ENTRY.parent / page))
        at.run()
        assert not at.exception, (page, at.exception)
        shown.append(_shown(at))
    return shown


def test_streamlit_app_py_shows_every_page_of_the_packaged_app(app_env):
    entry = ROOT / "streamlit_app.py"
    assert entry.is_file(), "the top-level streamlit_app.py is missing"
    from_checkout = _pages(entry)
    assert from_checkout == _pages(medzero.app.ENTRY)
    titles = [page[0] for page in from_checkout if page]
    assert any("Voice quality" in t for t in from_checkout[0]), from_checkout[0]
    assert any("X-ray" in t for t in from_checkout[1]), from_checkout[1]
    assert len(set(map(tuple, from_checkout))) == 4, titles  # four different pages, not one page four times


def test_checkout_config_matches_the_options_medzero_app_passes():
    """``streamlit run streamlit_app.py`` reads .streamlit/config.toml: it must keep the app on this
    machine and cap uploads exactly as ``medzero app`` does."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    flat = {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}
    as_flags = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in flat.items()}
    assert as_flags == medzero.app.OPTIONS
