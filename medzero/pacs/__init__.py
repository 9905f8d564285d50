"""medzero as a PACS node: read from DICOMweb, receive by C-STORE, write results back as DICOM SR.

- :mod:`medzero.pacs.dicomweb`: ``dicomweb://HOST[:PORT]/PATH/studies/UID[/series/UID[/instances/UID]]``
  and QIDO-RS queries expand, instance by instance, into named in-memory Part-10 sources
  (:func:`expand_dicomweb`), for ``medzero classify`` and ``medzero index add``.
- :mod:`medzero.pacs.scp`: :class:`Listener` / :func:`listen`, a C-STORE SCP that triages each
  received image, keeps PHI-safe results in SQLite, optionally indexes them, and sends a
  structured report back.
- :mod:`medzero.pacs.sr`: :func:`build_sr`, a TID 1500 Comprehensive 3D SR of the results that
  says it is a research result.
- :mod:`medzero.pacs.sc`: :func:`build_sc`, a label's heatmap overlay as a Secondary Capture of the
  study ("not for diagnosis" burned in), for viewers that cannot show an SR.

Needs the ``pacs`` extra (dicomweb-client, pynetdicom, highdicom): ``pip install 'medzero[pacs]'``.
Names load lazily, so ``import medzero.pacs`` is cheap and a missing extra fails with one line on use.
"""
from __future__ import annotations

import importlib
import importlib.util

from ..core.errors import MedzeroError

__all__ = [
    "expand_dicomweb",
    "parse_dicomweb_url",
    "parse_query",
    "load_credentials",
    "Credentials",
    "build_sr",
    "send_sr",
    "build_sc",
    "Listener",
    "listen",
    "require_pacs",
]

#: import name -> distribution name, for the one-line message
PACS_DEPENDENCIES = {"dicomweb_client": "dicomweb-client", "pynetdicom": "pynetdicom", "highdicom": "highdicom"}


def require_pacs(*modules: str) -> None:
    """Raise a one-line :class:`MedzeroError` naming what to install when a PACS dependency is missing."""
    missing = [PACS_DEPENDENCIES.get(m, m) for m in (modules or PACS_DEPENDENCIES) if importlib.util.find_spec(m) is None]
    if missing:
        raise MedzeroError(f"PACS integration needs {', '.join(missing)}: pip install 'medzero[pacs]'")


_EXPORTS = {
    "expand_dicomweb": "medzero.pacs.dicomweb",
    "parse_dicomweb_url": "medzero.pacs.dicomweb",
    "parse_query": "medzero.pacs.dicomweb",
    "load_credentials": "medzero.pacs.dicomweb",
    "Credentials": "medzero.pacs.dicomweb",
    "build_sr": "medzero.pacs.sr",
    "send_sr": "medzero.pacs.sr",
    "build_sc": "medzero.pacs.sc",
    "Listener": "medzero.pacs.scp",
    "listen": "medzero.pacs.scp",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medzero.pacs' has no attribute {name!r}")
