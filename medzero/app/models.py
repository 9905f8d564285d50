"""Models: whether each modality's model is on this machine and where from; install, verify and make model packs."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

import medzero
from medzero.app import common, model_check
from medzero.app.common import tr

_ENV = common.MODEL_ENV
_WHAT = {
    "audio": ("Voice quality and audio search", "语音质量和音频检索"),
    "image": ("Chest X-ray and image search", "胸部 X 光和图像检索"),
}
#: A pack up to this size (MB) is also offered as a download from the page.
_DOWNLOAD_MB = 500

st.title(tr("Models", "模型"))
st.caption(tr(
    "Each modality has one model, loaded once for this app process on first use. A model that is not on this machine "
    "only disables its own pages; the other modality keeps working. On a machine without internet access, install a "
    "model pack made on one with it.",
    "每种模态使用一个模型，在本应用进程中首次使用时加载一次。本机缺少的模型只影响它自己的页面，另一种模态照常工作。"
    "在不能上网的机器上，请安装在能上网的机器上制作的模型包。",
))

status = common.model_status()
for modality in ("audio", "image"):
    st.subheader(tr(f"{modality.capitalize()} model", f"{model_check.noun(modality)}模型"))
    try:
        ref = common.model_ref(modality)
    except medzero.MedzeroError as exc:
        st.error(common.app_message(exc))
        continue
    source = tr(f"from ${_ENV[modality]}", f"来自 ${_ENV[modality]}") if os.environ.get(_ENV[modality]) else tr("the registered default", "注册的默认模型")
    st.markdown(tr(f"Configured: `{ref}` ({source}) · used by: {_WHAT[modality][0]}",
                   f"配置：`{ref}`（{source}）· 用于：{_WHAT[modality][1]}"))
    found = model_check.availability(modality)
    if found.available:
        box = st.info if found.location.kind == "hub" else st.success
        box(tr("Available: ", "可用：") + model_check.describe(found), icon=":material/check_circle:")
    else:
        model_check.banner(modality, key=f"models_{modality}", expanded=False)
    entry = status.get(modality)
    if entry is not None and entry["ref"] != ref:
        entry = None  # a model this process loaded earlier under another configuration
    if (entry is None or "error" in entry) and st.button(tr(f"Load the {modality} model now", f"立即加载{model_check.noun(modality)}模型"),
                                                           key=f"load_{modality}"):
        try:
            common.load_encoder(modality)
        except medzero.MedzeroError:
            pass
        entry = common.model_status().get(modality)
    if entry is None:
        st.caption(tr("Not loaded yet: it loads on the first Classify or Search that needs it (or press the button).",
                      "尚未加载：在第一次需要它的“分类”或“检索”时加载（或按上面的按钮）。"))
    elif "error" in entry:
        st.error(tr("**Could not load it.** ", "**无法加载。** ") + common.app_message(entry["error"]), icon=":material/error:")
    else:
        st.table(
            pd.DataFrame(
                [
                    {"field": tr("model id (weights from)", "模型标识（权重来源）"), "value": entry["model_id"]},
                    {"field": tr("fingerprint", "指纹"), "value": entry["fingerprint"]},
                    {"field": tr("device", "设备"), "value": entry["device"]},
                    {"field": tr("embedding size", "嵌入维度"), "value": str(entry["dim"])},
                    *([{"field": tr("sample rate", "采样率"), "value": f"{entry['sample_rate']} Hz"}] if entry["sample_rate"] else []),
                ]
            ).rename(columns={"field": tr("field", "字段"), "value": tr("value", "值")}).style.hide(axis="index")
        )

# -- installed packs ----------------------------------------------------------------------------
st.subheader(tr("Installed model packs", "已安装的模型包"))
packs = medzero.installed_model_packs()
st.caption(tr(f"Model packs are installed in `{medzero.model_packs_dir()}`.", f"模型包安装在 `{medzero.model_packs_dir()}`。"))
if packs:
    st.table(
        pd.DataFrame(
            [
                {
                    tr("name", "名称"): p.name,
                    tr("modality", "模态"): model_check.noun(p.modality),
                    tr("packed from", "来源"): p.source + (f"@{p.revision}" if p.revision else ""),
                    tr("fingerprint", "指纹"): p.fingerprint,
                    tr("installed", "安装时间"): p.manifest.get("installed", ""),
                    tr("licence", "许可证"): (p.manifest.get("licence") or {}).get("id") or "",
                }
                for p in packs
            ]
        ).style.hide(axis="index")
    )
    if st.button(tr("Verify the installed packs", "校验已安装的模型包"), key="models_verify"):
        with st.spinner(tr("Checking every file and loading each model offline…", "正在检查每个文件并离线加载每个模型……")):
            try:
                checks = medzero.verify_model_packs()
            except medzero.MedzeroError as exc:
                checks = []
                st.error(common.app_message(exc), icon=":material/error:")
        for c in checks:
            if c.ok:
                st.success(tr(f"{c.name}: every checksum matches, and it loads offline with the pack's preprocessing.",
                              f"{c.name}：所有校验和一致，并能以模型包记录的预处理离线加载。"))
            else:
                st.error(f"{c.name}: {c.problem}", icon=":material/error:")
else:
    st.caption(tr("None yet.", "暂无。"))

with st.expander(tr("Install a model pack", "安装模型包"), expanded=not packs):
    model_check.install_form(key="models_install")

# -- making a pack (on a machine with internet access) -------------------------------------------
with st.expander(tr("Make a model pack (on a computer with internet access)", "制作模型包（在能上网的电脑上）")):
    st.caption(tr(
        "Writes the chosen models (downloaded if needed) into one .tar file on this server: safetensors weights, "
        "configuration, tokenizer, preprocessing, licence text, and a manifest with every file's sha256 and the model "
        "revision. Carry it to the offline machine and install it on its Models page.",
        "把所选模型（需要时先下载）写入服务器上的一个 .tar 文件：safetensors 权重、配置、分词器、预处理、许可证文本，"
        "以及记录每个文件 sha256 和模型版本的清单。把它带到离线机器上，在那里的“模型”页面安装。",
    ))
    registered = [m.name for m in medzero.list_models()]
    chosen = st.multiselect(tr("Models", "模型"), registered, default=[m.name for m in medzero.list_models() if m.default],
                            key="models_pack_names")
    output = st.text_input(tr("Write the pack to (a path on this server)", "模型包写入路径（服务器上）"),
                           str(Path.home() / "medzero-models.tar"), key="models_pack_output")
    if st.button(tr("Make the pack", "制作模型包"), key="models_pack_go", disabled=not (chosen and output.strip())):
        path = Path(output.strip()).expanduser()
        try:
            with st.spinner(tr("Packing (models are downloaded and loaded first)…", "正在打包（先下载并加载模型）……")):
                entries = medzero.pack_models(chosen, path)
        except medzero.MedzeroError as exc:
            st.error(tr("**No pack was written.** ", "**没有写出模型包。** ") + common.app_message(exc), icon=":material/error:")
        else:
            size = path.stat().st_size / 1e6
            st.success(tr(f"Wrote `{path}` ({size:.1f} MB): " + ", ".join(e["name"] for e in entries) + ".",
                          f"已写出 `{path}`（{size:.1f} MB）：" + "、".join(e["name"] for e in entries) + "。"))
            if size <= _DOWNLOAD_MB:
                st.download_button(tr("Download the pack", "下载模型包"), data=path.read_bytes(), file_name=path.name,
                                   mime="application/x-tar", key="models_pack_download", on_click="ignore")

# -- registered ---------------------------------------------------------------------------------
st.subheader(tr("Registered models", "注册的模型"))
st.table(
    pd.DataFrame(
        [
            {tr("name", "名称"): m.name, tr("modality", "模态"): model_check.noun(m.modality),
             tr("hub id", "模型中心标识"): m.hub_id + (f"@{m.revision}" if m.revision else ""),
             tr("default", "默认"): tr("yes", "是") if m.default else "", tr("description", "说明"): m.description}
            for m in medzero.list_models()
        ]
    ).style.hide(axis="index")
)
st.caption(tr("Any local model folder, installed model pack or hub id in the Hugging Face cache works too.",
              "任何本地模型文件夹、已安装的模型包或 Hugging Face 缓存中的模型中心标识也都可以使用。"))
