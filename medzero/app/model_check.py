"""Is each modality's model on this machine? Checked as a page is drawn, before anyone presses a button.

:func:`banner` draws, on every page that needs a model, what is missing and the app's own way to fix
it: install a model pack (uploaded, or from a path on the server) or a model folder, or copy a
Hugging Face cache into place. The check is :func:`medzero.model_availability`, which loads nothing
and asks the hub at most once per few minutes, so a page never waits on a model that is not there.
Advice here never names command-line flags: the app has its own way to fix each case.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import streamlit as st

import medzero
from medzero.app import common
from medzero.app.common import tr

#: Upload limit for a model pack (MB); the server's default limit is sized for recordings.
PACK_UPLOAD_MB = 4096
_NOUN = {"audio": ("audio", "音频"), "image": ("image", "图像")}
_DONE = "model_check_done"


def noun(modality: str) -> str:
    en, zh = _NOUN.get(modality, (modality, modality))
    return tr(en, zh)


def availability(modality: str) -> medzero.ModelAvailability:
    """Where the modality's configured model is (pack, folder, Hugging Face cache, the hub), or why it is missing."""
    return medzero.model_availability(modality=modality)


def describe(found: medzero.ModelAvailability) -> str:
    """Where an available model's files are, in the page's language."""
    kind = found.location.kind
    where = f"`{found.where}`"
    if kind == "pack":
        return tr(f"installed model pack in {where}", f"已安装的模型包：{where}")
    if kind == "directory":
        return tr(f"model folder {where}", f"模型文件夹：{where}")
    if kind == "hub-cache":
        return tr(f"Hugging Face cache, {where}", f"Hugging Face 缓存：{where}")
    if kind == "hub":
        return tr(f"not on this machine yet: downloads from the hub on first use ({found.where})",
                  f"尚未在本机：首次使用时从模型中心下载（{found.where}）")
    return found.where


def _display(found: medzero.ModelAvailability) -> str:
    if found.name and found.hub_id and found.name != found.hub_id:
        return f"{found.name} ({found.hub_id})"
    return found.name or found.ref


def banner(modality: str, *, key: str, without: str = "", expanded: bool = True) -> bool:
    """Whether ``modality``'s model can be used; if not, an error box saying what is missing and a
    form to install it (in an expander, open unless ``expanded`` is false). ``without``: what the
    page does until then (e.g. "Classify is off")."""
    _show_done(key)
    found = availability(modality)
    if found.available:
        return True
    env = common.MODEL_ENV.get(modality, "")
    with st.container(border=True, key=f"{key}_missing_model"):
        st.error(
            tr(f"**The {noun(modality)} model is not on this machine.** ", f"**本机没有{noun(modality)}模型。** ")
            + _why(found) + (f" {without}" if without else ""),
            icon=":material/error:",
        )
        st.markdown(tr("**What to do:**", "**解决办法：**"))
        if found.location.kind == "missing" and os.environ.get(env):
            st.markdown(tr(
                f"The app was started with `{env}` set to `{found.ref}`, which does not exist on this server. "
                f"Whoever starts the app: set `{env}` to an existing model folder, or leave it unset to use the default "
                f"{noun(modality)} model, and start the app again. Model packs installed here are listed on the Models page.",
                f"启动本应用时 `{env}` 被设为 `{found.ref}`，而服务器上没有这个路径。请负责启动应用的人把 `{env}` 设为一个存在的"
                f"模型文件夹，或者不设置它以使用默认的{noun(modality)}模型，然后重新启动应用。已安装的模型包列在“模型”页面上。",
            ))
        else:
            with st.expander(tr("Install it here", "在这里安装"), expanded=expanded):
                install_form(key=key, modality=modality, name=found.name or found.ref, hub_id=found.hub_id, hub_cache=found.hub_cache)
    return False


#: The library's reasons for a missing hub model, in Chinese (anything else stays as it is).
_ZH = [
    (r"^its text tower (\S+) is not in the Hugging Face cache", r"Hugging Face 缓存中没有它的文本塔 \1"),
    (r"^its weights are not in the Hugging Face cache", "Hugging Face 缓存中没有它的权重"),
    (r"^its processor files are not in the Hugging Face cache", "Hugging Face 缓存中没有它的处理器文件"),
    (r"^it is not in the Hugging Face cache", "Hugging Face 缓存中没有它"),
    (r", and HF_HUB_OFFLINE is set$", "，而且设置了 HF_HUB_OFFLINE（离线模式）"),
    (r", and (\S+) cannot be reached \((.*)\)$", r"，而且无法连接 \1（\2）"),
    (r", and (\S+) cannot be used \(it answers HTTP (\d+)\)$", r"，而且 \1 不可用（它返回 HTTP \2）"),
]


def _why_zh(why: str) -> str:
    for pattern, replacement in _ZH:
        why = re.sub(pattern, replacement, why)
    return why


def _why(found: medzero.ModelAvailability) -> str:
    model = f"`{_display(found)}`"
    kind = found.location.kind
    if kind == "missing":
        return tr(f"The configured model folder {model} does not exist.", f"配置的模型文件夹 {model} 不存在。")
    if kind == "pack":
        return tr(f"The installed model pack {model} is damaged: {found.why}.", f"已安装的模型包 {model} 已损坏：{found.why}。")
    return tr(
        f"{model} is not installed here, and it cannot be downloaded ({found.why}).",
        f"{model} 没有安装在本机，也无法下载（{_why_zh(found.why)}）。",
    )


def install_form(*, key: str, modality: str | None = None, name: str = "", hub_id: str = "", hub_cache: str = "") -> None:
    """Install a model pack by upload, or a pack or model folder by its path on the server."""
    st.markdown(tr(
        "Install a **model pack**: one `.tar` file holding the model, its configuration, tokenizer, preprocessing, "
        "licence and checksums. Make it on a computer with internet access (this app's **Models** page there: "
        "*Make a model pack*) and carry it here. Every file is checked against the pack's checksums before anything is installed.",
        "安装一个**模型包**：一个 `.tar` 文件，包含模型、配置、分词器、预处理、许可证和校验和。在能上网的电脑上制作"
        "（在那台电脑上本应用的**模型**页面：*制作模型包*），再带到这里。安装前会用模型包的校验和逐一检查每个文件。",
    ))
    generation = st.session_state.get(f"{key}_pack_generation", 0)  # a new uploader after each install
    upload = st.file_uploader(
        tr("Upload a model pack (.tar)", "上传模型包（.tar）"), type=["tar"], key=f"{key}_pack_upload_{generation}",
        max_upload_size=PACK_UPLOAD_MB,
    )
    if upload is not None and st.button(tr("Install the uploaded pack", "安装上传的模型包"), key=f"{key}_pack_install_upload", type="primary"):
        _install(upload, key=key, label=upload.name)
    path = st.text_input(
        tr("…or the path of a model pack or a model folder on this server", "……或服务器上模型包或模型文件夹的路径"),
        key=f"{key}_pack_path", placeholder="/media/usb/medzero-models.tar",
    )
    if st.button(tr("Install from this path", "从此路径安装"), key=f"{key}_pack_install_path", disabled=not path.strip()):
        source = Path(path.strip()).expanduser()
        if source.is_dir() and name and modality:
            _install(source, key=key, label=str(source), name=name, modality=modality)  # a folder: under the missing model's name
        else:
            _install(source, key=key, label=str(source))
    if hub_id and hub_cache:
        st.caption(tr(
            f"Or copy a Hugging Face cache that holds `{hub_id.removeprefix('hf-hub:')}` into `{hub_cache}` on this server, then reload the page.",
            f"或者把包含 `{hub_id.removeprefix('hf-hub:')}` 的 Hugging Face 缓存复制到服务器上的 `{hub_cache}`，然后刷新页面。",
        ))


def _install(source: Any, *, key: str, label: str, name: str | None = None, modality: str | None = None) -> None:
    try:
        with st.spinner(tr(f"Checking and installing {label}…", f"正在检查并安装 {label}……")):
            done = medzero.install_model_pack(source, name=name, modality=modality)
    except medzero.MedzeroError as exc:
        st.error(tr("**Nothing was installed.** ", "**没有安装任何内容。** ") + common.app_message(exc), icon=":material/error:")
        return
    names = ", ".join(f"{p.name} ({p.modality})" for p in done)
    st.session_state[_DONE] = (key, tr(f"Installed {names}.", f"已安装 {names}。"))
    st.session_state[f"{key}_pack_generation"] = st.session_state.get(f"{key}_pack_generation", 0) + 1
    st.rerun()  # draw the page again: the banner goes once its model is there


def _show_done(key: str) -> None:
    done = st.session_state.get(_DONE)
    if done is not None and done[0] == key:
        st.success(done[1], icon=":material/check_circle:")
        del st.session_state[_DONE]
