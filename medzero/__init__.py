"""medzero: multimodal zero-shot classification for clinical triage.

Audio goes to CLAP, DICOM and X-ray images to CLIP (BiomedCLIP by default); labels are words in
YAML prompt sets. The public API::

    import medzero
    result = medzero.classify("visit.m4a")              # voice-quality triage by default
    result.verdict, result.scores, result.summary("zh")
    clf = medzero.Classifier(task="chest_xray_findings")
    results = clf.classify_batch(["scans/"])            # folders are expanded by content
    with medzero.CaseIndex("cases/") as index:
        index.add(["scans/"])
        hits = index.search_text("left pleural effusion", k=5)

This module is also the composition root: it declares the built-in modality plug-ins
(``medzero.audio``, ``medzero.image``) to the registry in :mod:`medzero.core.modality`, which
imports each one the first time its modality is needed, and the ``dicomweb://`` source scheme
(``medzero.pacs``, the ``pacs`` extra) to the ingest pipeline, and the ``ray`` engine
(``medzero.distributed.RayEngine``) to :mod:`medzero.core.engines`. Names are loaded lazily, so
``import medzero`` stays cheap.
"""
from __future__ import annotations

import importlib
import logging

from .core.engines import declare_engine
from .core.ingest import declare_scheme
from .core.modality import declare_plugin
from .core.version import __version__

declare_plugin("audio", "medzero.audio")
declare_plugin("image", "medzero.image")
declare_scheme("dicomweb", "medzero.pacs.dicomweb:expand_dicomweb", extra="pacs")
declare_scheme("dicomwebs", "medzero.pacs.dicomweb:expand_dicomweb", extra="pacs")
declare_engine("ray", "medzero.distributed:RayEngine")

#: public name -> (module, attribute)
_EXPORTS = {
    "classify": ("medzero.classifier", "classify"),
    "Classifier": ("medzero.classifier", "Classifier"),
    "expand_sources": ("medzero.classifier", "expand_sources"),
    "Source": ("medzero.core.ingest", "Source"),
    "register_scheme": ("medzero.core.ingest", "register_scheme"),
    "Modality": ("medzero.core.modality", "Modality"),
    "get_modality": ("medzero.core.modality", "get_modality"),
    "modalities": ("medzero.core.modality", "modalities"),
    "register_modality": ("medzero.core.modality", "register_modality"),
    "Encoder": ("medzero.core.contracts", "Encoder"),
    "ModelCfg": ("medzero.encoders.registry", "ModelCfg"),
    "create_encoder": ("medzero.encoders.factory", "create"),
    "list_models": ("medzero.encoders.registry", "list_models"),
    "default_model": ("medzero.encoders.factory", "default_model"),
    "model_availability": ("medzero.encoders.factory", "availability"),
    "ModelAvailability": ("medzero.encoders.factory", "Availability"),
    "pack_models": ("medzero.encoders.packs", "pack"),
    "install_model_pack": ("medzero.encoders.packs", "install"),
    "verify_model_packs": ("medzero.encoders.packs", "verify"),
    "installed_model_packs": ("medzero.encoders.installed", "installed"),
    "model_packs_dir": ("medzero.encoders.installed", "models_dir"),
    "evaluate": ("medzero.evaluation", "evaluate"),
    "calibrate": ("medzero.evaluation", "calibrate"),
    "apply_calibration": ("medzero.tasks.overlay", "apply_calibration"),
    "Task": ("medzero.tasks.schema", "Task"),
    "Label": ("medzero.tasks.schema", "Label"),
    "load_task": ("medzero.tasks.schema", "load_task"),
    "list_tasks": ("medzero.tasks.schema", "list_tasks"),
    "task_from_labels": ("medzero.tasks.schema", "task_from_labels"),
    "Result": ("medzero.core.results", "Result"),
    "explanation_overlays": ("medzero.image.explain", "overlay_pngs"),  # PNGs of Result.explanations
    "Reason": ("medzero.core.results", "Reason"),
    "Segment": ("medzero.core.results", "Segment"),
    "Hit": ("medzero.core.results", "Hit"),
    "format_value": ("medzero.core.results", "format_value"),
    "format_values": ("medzero.core.results", "format_values"),
    "cache_dir": ("medzero.encoders.cache", "cache_dir"),
    "MedzeroError": ("medzero.core.errors", "MedzeroError"),
    "BadInputError": ("medzero.core.errors", "BadInputError"),
    "TaskError": ("medzero.core.errors", "TaskError"),
    "ModelUnavailableError": ("medzero.core.errors", "ModelUnavailableError"),
    "CaseIndexError": ("medzero.core.errors", "CaseIndexError"),
    "CaseIndex": ("medzero.retrieval", "CaseIndex"),
    "AddReport": ("medzero.retrieval", "AddReport"),
    "load_audio": ("medzero.audio.io", "load_audio"),
    "PcmFormat": ("medzero.core.sniff", "PcmFormat"),
    "read_image": ("medzero.image.io", "read_image"),
    "WINDOW_PRESETS": ("medzero.image.pixels", "WINDOW_PRESETS"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medzero' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


logging.getLogger(__name__).addHandler(logging.NullHandler())
