"""medzero's Streamlit app: a thin layer over the public API (``make app`` or ``medzero app``).

One entry file with ``st.navigation``; the pages are the other scripts in this folder (paths are
relative to this file). Streamlit runs it as a script, so imports are absolute. Models are chosen by
``MEDZERO_AUDIO_MODEL`` / ``MEDZERO_IMAGE_MODEL`` (read by the library) and load once per process.
"""
from __future__ import annotations

import streamlit as st

from medzero.app.common import LANGS

st.set_page_config(page_title="medzero", page_icon=":material/stethoscope:", layout="wide")

pages = [
    st.Page("voice.py", title="Voice quality", icon=":material/mic:", default=True),
    st.Page("xray.py", title="Chest X-ray", icon=":material/radiology:"),
    st.Page("search.py", title="Case search", icon=":material/search:"),
    st.Page("models.py", title="Models", icon=":material/memory:"),
]
page = st.navigation(pages)

with st.sidebar:
    st.radio("Language / 语言", list(LANGS), format_func=LANGS.get, key="lang", horizontal=True,
             help="Label names, verdicts, reasons and advice are shown in this language.")
    st.caption("medzero: zero-shot triage with CLAP (audio) and CLIP (images). No model was trained on your data.")

st.warning(
    "**Research tool, not a diagnosis.** Scores come from zero-shot models with uncalibrated thresholds; "
    "a clinician decides. CLAP judges how a recording *sounds*, not what was said.",
    icon=":material/warning:",
)
page.run()
