"""Models: which encoders this app process has loaded, and what to do when one is not available."""
from __future__ import annotations

import os

import pandas as pd
import streamlit as st

import medzero
from medzero.app import common

_ENV = common.MODEL_ENV
_WHAT = {"audio": "Voice quality and audio search", "image": "Chest X-ray and image search"}

st.title("Models")
st.caption(
    "Each modality has one model, loaded once for this app process on first use. A model that cannot be loaded "
    "offline only disables its own pages; the other modality keeps working."
)

status = common.model_status()
for modality in ("audio", "image"):
    st.subheader(f"{modality.capitalize()} model")
    try:
        ref = common.model_ref(modality)
    except medzero.MedzeroError as exc:
        st.error(str(exc))
        continue
    source = f"from ${_ENV[modality]}" if os.environ.get(_ENV[modality]) else "the registered default"
    st.markdown(f"Configured: `{ref}` ({source}) · used by: {_WHAT[modality]}")
    entry = status.get(modality)
    if entry is not None and entry["ref"] != ref:
        entry = None  # a model this process loaded earlier under another configuration
    if (entry is None or "error" in entry) and st.button(f"Load the {modality} model now", key=f"load_{modality}"):
        try:
            common.load_encoder(modality)
        except medzero.MedzeroError:
            pass
        entry = common.model_status().get(modality)
    if entry is None:
        st.info("Not loaded yet: it loads on the first Classify or Search that needs it (or press the button).")
    elif "error" in entry:
        st.error(entry["error"], icon=":material/error:")
        st.markdown(
            f"**What to do:** on a machine without internet, copy the model folder (made with `save_pretrained`, or "
            f"the Hugging Face cache) here and start the app with `{_ENV[modality]}=/path/to/model` "
            f"(or `local-dir:/path` for open_clip). `medzero models` lists the registered names."
        )
    else:
        st.table(
            pd.DataFrame(
                [
                    {"field": "model id (weights from)", "value": entry["model_id"]},
                    {"field": "fingerprint", "value": entry["fingerprint"]},
                    {"field": "device", "value": entry["device"]},
                    {"field": "embedding size", "value": str(entry["dim"])},
                    *([{"field": "sample rate", "value": f"{entry['sample_rate']} Hz"}] if entry["sample_rate"] else []),
                ]
            ).style.hide(axis="index")
        )

st.subheader("Registered models")
st.table(
    pd.DataFrame(
        [
            {"name": m.name, "modality": m.modality, "hub id": m.hub_id + (f"@{m.revision}" if m.revision else ""),
             "default": "yes" if m.default else "", "description": m.description}
            for m in medzero.list_models()
        ]
    ).style.hide(axis="index")
)
st.caption("Any local model directory (`local-dir:/path`) or hub id in the Hugging Face cache works too.")
