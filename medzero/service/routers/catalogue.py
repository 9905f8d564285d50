"""``GET /v1/tasks`` (the shipped prompt sets, with the server's overlays for each) and ``GET /v1/models``."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

import medzero

from .. import schemas
from ..state import state_of
from .common import ERRORS, authorized

__all__ = ["router"]

router = APIRouter(tags=["catalogue"], dependencies=[Depends(authorized)])


@router.get("/v1/tasks", response_model=schemas.TasksResponse, responses=ERRORS)
def tasks(request: Request):
    """The shipped prompt sets: labels, thresholds and verdicts."""
    state = state_of(request)
    out = []
    for task in state.tasks.values():
        out.append({
            "name": task.name,
            "modality": task.modality,
            "mode": task.mode,
            "description": {"en": task.description.get("en"), "zh": task.description.get("zh")} if task.description else None,
            "labels": [
                {"id": lb.id, "name": {"en": lb.display("en"), "zh": lb.display("zh")}, "polarity": lb.polarity,
                 "threshold": lb.threshold}
                for lb in task.labels
            ],
            "verdicts": [{"id": v.id, "name": {"en": v.display("en"), "zh": v.display("zh")}} for v in task.verdicts],
            "calibrations": sorted(n for n, c in state.calibrations.items() if c.task == task.name),
        })
    return {"tasks": out}


@router.get("/v1/models", response_model=schemas.ModelsResponse, responses=ERRORS)
def models(request: Request):
    """Registered named models, and the state of the ones this server uses."""
    registered = [
        {"name": m.name, "modality": m.modality, "family": m.family, "hub_id": m.hub_id, "revision": m.revision,
         "description": m.description, "default": m.default}
        for m in medzero.list_models()
    ]
    return {"models": registered, "served": list(state_of(request).models.values())}
