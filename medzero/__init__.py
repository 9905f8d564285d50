"""medzero: multimodal zero-shot classification for clinical triage.

Audio goes to CLAP, DICOM and X-ray images to CLIP (BiomedCLIP by default); labels are words in
YAML prompt sets. The public API::

    import medzero
    result = medzero.classify("visit.m4a")              # voice-quality triage by default
    result.verdict, result.scores, result.summary("zh")
    clf = medzero.Classifier(task="chest_xray_findings")
    results = clf.classify_batch(["scans/"])            # folders are expanded by content
"""
from __future__ import annotations

import logging

from .api import DEFAULT_TASKS, Classifier, classify, expand_sources
from .core.encoder import Encoder, ModelCfg, create as create_encoder, list_models
from .core.errors import BadInputError, CaseIndexError, MedzeroError, ModelUnavailableError, TaskError
from .core.prompts import Label, Task, list_tasks, load_task, task_from_labels
from .core.results import Hit, Reason, Result, Segment

__version__ = "0.1.0"

__all__ = [
    "classify",
    "Classifier",
    "expand_sources",
    "DEFAULT_TASKS",
    "Encoder",
    "ModelCfg",
    "create_encoder",
    "list_models",
    "Task",
    "Label",
    "load_task",
    "list_tasks",
    "task_from_labels",
    "Result",
    "Reason",
    "Segment",
    "Hit",
    "MedzeroError",
    "BadInputError",
    "TaskError",
    "ModelUnavailableError",
    "CaseIndexError",
    "CaseIndex",
]


def __getattr__(name: str):
    # The case index imports faiss; load it only when it is asked for.
    if name == "CaseIndex":
        from .retrieval import CaseIndex

        return CaseIndex
    raise AttributeError(f"module 'medzero' has no attribute {name!r}")

logging.getLogger(__name__).addHandler(logging.NullHandler())
