"""``/healthz`` (the process answers) and ``/readyz`` (the models named at start-up are loaded)."""
from __future__ import annotations

from fastapi import APIRouter, Request

from .. import schemas
from ..errors import ApiError
from ..state import state_of

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=schemas.Health)
async def healthz():
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", response_model=schemas.Readiness, responses={503: {"model": schemas.ErrorResponse}})
async def readyz(request: Request):
    """200 once the models named at start-up are loaded; 503 while they load or when one failed."""
    state = state_of(request)
    if not state.ready:
        failed = [f"{m['modality']}: {m['error']}" for m in state.models.values() if m["state"] == "failed"]
        detail = "; ".join(failed) if failed else "models are loading"
        raise ApiError(503, "not_ready", detail, {"Retry-After": "5"})
    return {"status": "ready", "models": list(state.models.values())}
