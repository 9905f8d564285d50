"""medzero's Streamlit app: a thin layer over the public API (``make app`` or ``medzero app``).

One entry file with ``st.navigation``; the pages are the other scripts in this folder, named by
absolute path (Streamlit resolves relative page paths against the script it was started with, which
is the checkout's ``streamlit_app.py`` when it is run that way). Streamlit runs it as a script, so imports are absolute. Models are chosen by
``MEDZERO_AUDIO_MODEL`` / ``MEDZERO_IMAGE_MODEL`` (read by the library) and load once per process.

The language (English or Chinese) comes from the page address (``?lang=zh``) and the sidebar switch,
and is written back to the address on every run, so a reload or a shared link keeps it. It is set
before the pages are built, so their titles in the navigation follow it too.
"""
from __future__ import annotations

import streamlit as st

from pathlib import Path

from medzero.app.common import LANGS, init_lang, keep_lang_in_url, tr

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="medzero", page_icon=":material/stethoscope:", layout="wide")
init_lang()

pages = [
    st.Page(HERE / "voice.py", title=tr("Voice quality", "语音质量"), icon=":material/mic:", default=True),
    st.Page(HERE / "xray.py", title=tr("Chest X-ray", "胸部 X 光"), icon=":material/radiology:"),
    st.Page(HERE / "search.py", title=tr("Case search", "病例检索"), icon=":material/search:"),
    st.Page(HERE / "models.py", title=tr("Models", "模型"), icon=":material/memory:"),
]
page = st.navigation(pages)

with st.sidebar:
    st.radio("Language / 语言", list(LANGS), format_func=LANGS.get, key="lang", horizontal=True,
             help=tr("The whole page is shown in this language.", "整个页面以此语言显示。"))
    st.caption(tr(
        "medzero: zero-shot triage with CLAP (audio) and CLIP (images). No model was trained on your data.",
        "medzero：用 CLAP（音频）和 CLIP（图像）做零样本分诊。没有任何模型在您的数据上训练过。",
    ))
keep_lang_in_url()

st.warning(
    tr(
        "**Research tool, not a diagnosis.** Scores come from zero-shot models with uncalibrated thresholds; "
        "a clinician decides. CLAP judges how a recording *sounds*, not what was said.",
        "**研究工具，不是诊断。** 分数来自零样本模型，阈值未经校准；由临床医生做决定。"
        "CLAP 判断的是录音*听起来*如何，而不是说了什么。",
    ),
    icon=":material/warning:",
)
page.run()
