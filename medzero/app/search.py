"""Case search: add recordings and images to a FAISS case index, then search it by text or by example."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import streamlit as st

import medzero
from medzero.app import common

st.title("Case search")
st.caption(
    "Find similar cases: every file added is embedded by its modality's model and stored in a local index. "
    "Search with words (\"a noisy recording\", \"chest x-ray with pleural effusion\") or with an example file."
)

try:
    CaseIndex = medzero.CaseIndex  # imports faiss on first use
except ImportError:
    st.error(
        "Case search needs `medzero.CaseIndex`, which this installation of medzero cannot load. "
        "The other pages work without it.",
        icon=":material/construction:",
    )
    st.stop()

ROOT = medzero.cache_dir() / "indexes"
NEW = "__new__"


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_index(path: str, audio_ref: str, image_ref: str):
    """One CaseIndex per directory and models for the process; writes go through ``common.lock_for``."""
    return CaseIndex(path, audio_model=audio_ref, image_model=image_ref)


def open_index(path: Path):
    return _open_index(str(path), common.model_ref("audio"), common.model_ref("image"))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[:80] or "file"


# -- choose or create ---------------------------------------------------------------------------
existing = sorted(p.name for p in ROOT.glob("*") if p.is_dir()) if ROOT.is_dir() else []
options = existing + [NEW]
picked = st.selectbox("Index", options, format_func=lambda n: "New index…" if n == NEW else n, key="search_index")
if picked == NEW:
    name = st.text_input("Name of the new index", "cases", key="search_new_name")
    index_dir = ROOT / _safe_name(name)
else:
    index_dir = ROOT / picked
with st.expander("Use an index in another directory"):
    other = st.text_input("Index directory on the server", "", key="search_other_dir", placeholder="/data/medzero-index")
if other.strip():
    index_dir = Path(other.strip()).expanduser()
st.caption(f"Index directory: `{index_dir}`")

index = None
try:
    with st.spinner("Opening the index…"):
        index = open_index(index_dir)
    stats = index.stats()
    spaces = ", ".join(f"{sp['count']} {sp['modality']} ({sp['model']})" for sp in stats.get("spaces", []))
    st.markdown(f"**{len(index)} cases** in this index" + (f": {spaces}" if spaces else ""))
    with st.expander("Index details"):
        st.json(stats, expanded=True)
except medzero.MedzeroError as exc:
    st.error(f"**Cannot open the index.** {exc}", icon=":material/error:")
    st.stop()


def _run_add(sources: list[str], what: str) -> None:
    bar = st.progress(0.0, text=f"Adding {what}…")
    done = {"n": 0}
    total = max(1, len(sources))

    def progress(n: int) -> None:  # called with the number of files just processed
        done["n"] += int(n)
        bar.progress(min(1.0, done["n"] / total), text=f"Adding {what}: {done['n']} of {total}")

    try:
        with common.lock_for(str(index_dir)):
            report = index.add(sources, progress=progress)
    except medzero.MedzeroError as exc:
        bar.empty()
        st.error(f"**Could not add {what}.** {exc}", icon=":material/error:")
        return
    bar.empty()
    st.session_state["search_add_report"] = (
        f"Added {len(report.added)} · already in the index {len(report.duplicates)} · errors {len(report.errors)}",
        [f"{name}: {message}" for name, message in report.errors],
    )
    st.rerun()  # redraw the case count with the new cases


# -- add ----------------------------------------------------------------------------------------
st.subheader("Add cases")
add_files, add_folder = st.tabs(["Upload files", "A folder on the server"])
with add_files:
    uploads = st.file_uploader(
        "Recordings and images", accept_multiple_files=True, key="search_uploads",
        type=["wav", "mp3", "flac", "ogg", "m4a", "amr", "dcm", "dicom", "png", "jpg", "jpeg", "tif", "tiff"],
    )
    st.caption(f"Uploaded files are kept in `{index_dir / 'uploads'}` so that hits can show them later.")
    if st.button("Add uploaded files", disabled=not uploads, key="search_add_uploads"):
        store = index_dir / "uploads"
        store.mkdir(parents=True, exist_ok=True)
        paths = []
        for up in uploads:
            data = up.getvalue()
            path = store / f"{hashlib.sha256(data).hexdigest()[:12]}-{_safe_name(up.name)}"
            if not path.exists():
                path.write_bytes(data)
            paths.append(str(path))
        _run_add(paths, f"{len(paths)} uploaded file(s)")
with add_folder:
    folder = st.text_input("Folder (searched recursively; files are recognised by content)", key="search_folder")
    if st.button("Add folder", disabled=not folder.strip(), key="search_add_folder"):
        if not Path(folder.strip()).expanduser().is_dir():
            st.error(f"No such folder on the server: {folder.strip()}", icon=":material/error:")
        else:
            sources = medzero.expand_sources(str(Path(folder.strip()).expanduser()))
            if not sources:
                st.warning("No audio or image files found in that folder.")
            else:
                _run_add(sources, f"{len(sources)} file(s) from {folder.strip()}")
report = st.session_state.get("search_add_report")
if report:
    st.success(report[0])
    for line in report[1]:
        st.error(line)

# -- search -------------------------------------------------------------------------------------
st.subheader("Search")
by = st.radio("Search by", ["Text", "An example file"], horizontal=True, key="search_by")
query_text, example = "", None
if by == "Text":
    query_text = st.text_input("Describe what you are looking for", key="search_text", placeholder="a noisy recording")
else:
    example = st.file_uploader("Example recording or image", key="search_example")
cols = st.columns(2)
if by == "Text":
    modality = cols[0].selectbox("Modality", ["any", "audio", "image"], key="search_modality")
else:
    modality = "any"
    cols[0].caption("An example is searched among the cases of its own modality.")
k = cols[1].slider("Number of hits", 1, 30, 6, key="search_k")

if st.button("Search", type="primary", key="search_go", disabled=not (query_text.strip() or example)):
    st.session_state.pop("search_hits", None)
    mod = None if modality == "any" else modality
    try:
        with st.spinner("Searching…"):
            if example is not None:  # embedded with its own modality's model; searches that modality
                hits = index.search_example(common.named_buffer(example.getvalue(), example.name), k)
            else:
                hits = index.search_text(query_text.strip(), k, modality=mod)
        st.session_state["search_hits"] = (query_text.strip() or example.name, hits)
    except medzero.MedzeroError as exc:
        st.error(f"**Search failed.** {exc}", icon=":material/error:")


@st.cache_data(show_spinner=False, max_entries=256)
def _thumbnail(path: str, mtime: float):
    pil = medzero.read_image(path).to_pil()
    pil.thumbnail((320, 320))
    return pil


stored = st.session_state.get("search_hits")
if stored is not None:
    query, hits = stored
    st.markdown(f"**{len(hits)} hit(s)** for *{query}*")
    if not hits:
        st.info("No cases matched (an empty index, or none of that modality).")
    per_row = 3
    for start in range(0, len(hits), per_row):
        row = st.columns(per_row)
        for col, hit in zip(row, hits[start : start + per_row]):
            with col.container(border=True):
                st.markdown(f"**{Path(hit.path).name}**  \nscore {hit.score:.3f} · {hit.modality}")
                try:
                    if not os.path.exists(hit.path):
                        st.caption("(file no longer on disk)")
                    elif hit.modality == "image":
                        st.image(_thumbnail(hit.path, os.path.getmtime(hit.path)), width="stretch")
                    else:
                        st.audio(hit.path)
                except medzero.MedzeroError as exc:
                    st.caption(str(exc))
                if hit.metadata:
                    with st.expander("metadata"):
                        st.json(hit.metadata)
