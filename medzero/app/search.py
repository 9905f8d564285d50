"""Case search: add recordings and images to a FAISS case index, then search it by text or by example."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import streamlit as st

import medzero
from medzero.app import common, model_check
from medzero.app.common import tr

st.title(tr("Case search", "病例检索"))
st.caption(tr(
    "Find similar cases: every file added is embedded by its modality's model and stored in a local index. "
    "Search with words (\"a noisy recording\", \"chest x-ray with pleural effusion\") or with an example file.",
    "查找相似病例：添加的每个文件都由其模态的模型编码，并存入本地索引。可以用文字（“a noisy recording”、"
    "“chest x-ray with pleural effusion”）或一个示例文件来检索。",
))
model_check.banner("audio", key="search_audio", expanded=False, without=tr(
    "Recordings cannot be added or searched until then.", "在此之前无法添加或检索录音。"))
model_check.banner("image", key="search_image", expanded=False, without=tr(
    "Images cannot be added or searched until then.", "在此之前无法添加或检索图像。"))

try:
    CaseIndex = medzero.CaseIndex  # imports faiss on first use
except ImportError:
    st.error(
        tr("Case search needs `medzero.CaseIndex`, which this installation of medzero cannot load. "
           "The other pages work without it.",
           "病例检索需要 `medzero.CaseIndex`，而这个 medzero 安装无法加载它。其他页面不受影响。"),
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
picked = st.selectbox(tr("Index", "索引"), options, format_func={n: tr("New index…", "新建索引……") if n == NEW else n for n in options}.get,
                      key="search_index")
if picked == NEW:
    name = st.text_input(tr("Name of the new index", "新索引的名称"), "cases", key="search_new_name")
    index_dir = ROOT / _safe_name(name)
else:
    index_dir = ROOT / picked
with st.expander(tr("Use an index in another directory", "使用其他目录中的索引")):
    other = st.text_input(tr("Index directory on the server", "服务器上的索引目录"), "", key="search_other_dir", placeholder="/data/medzero-index")
if other.strip():
    index_dir = Path(other.strip()).expanduser()
st.caption(tr(f"Index directory: `{index_dir}`", f"索引目录：`{index_dir}`"))

index = None
try:
    with st.spinner(tr("Opening the index…", "正在打开索引……")):
        index = open_index(index_dir)
    stats = index.stats()
    spaces = ", ".join(f"{sp['count']} {sp['modality']} ({sp['model']})" for sp in stats.get("spaces", []))
    st.markdown(tr(f"**{len(index)} cases** in this index", f"此索引中有 **{len(index)} 个病例**") + (f": {spaces}" if spaces else ""))
    with st.expander(tr("Index details", "索引详情")):
        st.json(stats, expanded=True)
except medzero.MedzeroError as exc:
    st.error(tr("**Cannot open the index.** ", "**无法打开索引。** ") + common.app_message(exc), icon=":material/error:")
    st.stop()


def _run_add(sources: list[str], what: str) -> None:
    bar = st.progress(0.0, text=tr(f"Adding {what}…", f"正在添加{what}……"))
    done = {"n": 0}
    total = max(1, len(sources))

    def progress(n: int) -> None:  # called with the number of files just processed
        done["n"] += int(n)
        bar.progress(min(1.0, done["n"] / total), text=tr(f"Adding {what}: {done['n']} of {total}", f"正在添加{what}：{done['n']} / {total}"))

    try:
        with common.lock_for(str(index_dir)):
            report = index.add(sources, progress=progress)
    except medzero.MedzeroError as exc:
        bar.empty()
        st.error(tr(f"**Could not add {what}.** ", f"**无法添加{what}。** ") + common.app_message(exc), icon=":material/error:")
        return
    bar.empty()
    st.session_state["search_add_report"] = (
        tr(f"Added {len(report.added)} · already in the index {len(report.duplicates)} · errors {len(report.errors)}",
           f"已添加 {len(report.added)} · 已在索引中 {len(report.duplicates)} · 出错 {len(report.errors)}"),
        _error_lines(report.errors),
    )
    st.rerun()  # redraw the case count with the new cases


def _error_lines(errors: list[tuple[str, str]]) -> list[str]:
    """One line per file, but a message shared by many files (a missing model) once, with their count."""
    by_message: dict[str, list[str]] = {}
    for name, message in errors:
        by_message.setdefault(common.app_message(message), []).append(name)
    return [f"{names[0]}: {message}" if len(names) == 1 else tr(f"{len(names)} files: {message}", f"{len(names)} 个文件：{message}")
            for message, names in by_message.items()]


# -- add ----------------------------------------------------------------------------------------
st.subheader(tr("Add cases", "添加病例"))
add_files, add_folder = st.tabs([tr("Upload files", "上传文件"), tr("A folder on the server", "服务器上的文件夹")])
with add_files:
    uploads = st.file_uploader(
        tr("Recordings and images", "录音和图像"), accept_multiple_files=True, key="search_uploads",
        type=["wav", "mp3", "flac", "ogg", "m4a", "amr", "dcm", "dicom", "png", "jpg", "jpeg", "tif", "tiff"],
    )
    st.caption(tr(f"Uploaded files are kept in `{index_dir / 'uploads'}` so that hits can show them later.",
                  f"上传的文件保存在 `{index_dir / 'uploads'}`，以便之后在检索结果中显示。"))
    if st.button(tr("Add uploaded files", "添加上传的文件"), disabled=not uploads, key="search_add_uploads"):
        store = index_dir / "uploads"
        store.mkdir(parents=True, exist_ok=True)
        paths = []
        for up in uploads:
            data = up.getvalue()
            path = store / f"{hashlib.sha256(data).hexdigest()[:12]}-{_safe_name(up.name)}"
            if not path.exists():
                path.write_bytes(data)
            paths.append(str(path))
        _run_add(paths, tr(f"{len(paths)} uploaded file(s)", f" {len(paths)} 个上传的文件"))
with add_folder:
    folder = st.text_input(tr("Folder (searched recursively; files are recognised by content)", "文件夹（递归查找；按内容识别文件）"),
                           key="search_folder")
    if st.button(tr("Add folder", "添加文件夹"), disabled=not folder.strip(), key="search_add_folder"):
        if not Path(folder.strip()).expanduser().is_dir():
            st.error(tr(f"No such folder on the server: {folder.strip()}", f"服务器上没有这个文件夹：{folder.strip()}"), icon=":material/error:")
        else:
            sources = medzero.expand_sources(str(Path(folder.strip()).expanduser()))
            if not sources:
                st.warning(tr("No audio or image files found in that folder.", "该文件夹中没有音频或图像文件。"))
            else:
                _run_add(sources, tr(f"{len(sources)} file(s) from {folder.strip()}", f" {folder.strip()} 中的 {len(sources)} 个文件"))
report = st.session_state.get("search_add_report")
if report:
    st.success(report[0])
    for line in report[1]:
        st.error(line)

# -- search -------------------------------------------------------------------------------------
st.subheader(tr("Search", "检索"))
_BY = {"Text": "文字", "An example file": "示例文件"}
by = st.radio(tr("Search by", "检索方式"), list(_BY), horizontal=True, key="search_by", format_func={b: tr(b, zh) for b, zh in _BY.items()}.get)
query_text, example = "", None
if by == "Text":
    query_text = st.text_input(tr("Describe what you are looking for", "描述您要找的内容"), key="search_text", placeholder="a noisy recording")
else:
    example = st.file_uploader(tr("Example recording or image", "示例录音或图像"), key="search_example")
cols = st.columns(2)
if by == "Text":
    _MODALITY = {"any": "全部", "audio": "音频", "image": "图像"}
    modality = cols[0].selectbox(tr("Modality", "模态"), list(_MODALITY), key="search_modality",
                                 format_func={m: tr(m, zh) for m, zh in _MODALITY.items()}.get)
else:
    modality = "any"
    cols[0].caption(tr("An example is searched among the cases of its own modality.", "示例文件只在同一模态的病例中检索。"))
k = cols[1].slider(tr("Number of hits", "结果数量"), 1, 30, 6, key="search_k")

if st.button(tr("Search", "检索"), type="primary", key="search_go", disabled=not (query_text.strip() or example)):
    st.session_state.pop("search_hits", None)
    mod = None if modality == "any" else modality
    try:
        with st.spinner(tr("Searching…", "正在检索……")):
            if example is not None:  # embedded with its own modality's model; searches that modality
                hits = index.search_example(common.named_buffer(example.getvalue(), example.name), k)
            else:
                hits = index.search_text(query_text.strip(), k, modality=mod)
        st.session_state["search_hits"] = (query_text.strip() or example.name, hits)
    except medzero.MedzeroError as exc:
        st.error(tr("**Search failed.** ", "**检索失败。** ") + common.app_message(exc), icon=":material/error:")


@st.cache_data(show_spinner=False, max_entries=256)
def _thumbnail(path: str, mtime: float):
    pil = medzero.read_image(path).to_pil()
    pil.thumbnail((320, 320))
    return pil


def _hit_card(hit, rank: int) -> None:
    with st.container(border=True):
        st.markdown(f"**{Path(hit.path).name}**  \n#{rank} · {tr('score', '分数')} {hit.score:.3f} · {model_check.noun(hit.modality)}")
        try:
            if not os.path.exists(hit.path):
                st.caption(tr("(file no longer on disk)", "（文件已不在磁盘上）"))
            elif hit.modality == "image":
                st.image(_thumbnail(hit.path, os.path.getmtime(hit.path)), width="stretch")
            else:
                st.audio(hit.path)
        except medzero.MedzeroError as exc:
            st.caption(common.app_message(exc))
        if hit.metadata:
            with st.expander(tr("metadata", "元数据")):
                st.json(hit.metadata)


stored = st.session_state.get("search_hits")
if stored is not None:
    query, hits = stored
    st.markdown(tr(f"**{len(hits)} hit(s)** for *{query}*", f"*{query}* 的结果：**{len(hits)} 条**"))
    if not hits:
        st.info(tr("No cases matched (an empty index, or none of that modality).", "没有匹配的病例（索引为空，或没有该模态的病例）。"))
    # Each modality's hits come from its own model: ranked (and shown) within their modality, best first.
    by_modality: dict[str, list] = {}
    for hit in hits:
        by_modality.setdefault(hit.modality, []).append(hit)
    if len(by_modality) > 1:
        st.caption(tr(
            "Audio and image cases are scored by different models whose scores are not comparable, so hits are ranked "
            "within each modality: the best of each, then the second of each, and so on.",
            "音频和图像病例由不同的模型评分，分数之间不可比较，因此结果在各自的模态内排序：先取每种模态的第一名，再取第二名，依此类推。",
        ))
    per_row = 3
    for modality, group in by_modality.items():
        if len(by_modality) > 1:
            st.markdown(tr(f"**{model_check.noun(modality).capitalize()} cases** ({len(group)}, ranked by the {modality} model's score)",
                           f"**{model_check.noun(modality)}病例**（{len(group)} 条，按{model_check.noun(modality)}模型的分数排序）"))
        for start in range(0, len(group), per_row):
            for offset, (col, hit) in enumerate(zip(st.columns(per_row), group[start : start + per_row])):
                with col:
                    _hit_card(hit, start + offset + 1)
