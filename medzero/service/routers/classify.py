"""``POST /v1/classify`` (one file), ``POST /v1/classify/batch`` (several, an error row per bad file) and
``POST /v1/explain`` (one image, its result with a heatmap per label, each also as a PNG overlay in base64).

Both check their options and the queue before the body is read (a raw body's options are all in the
query string), read the upload within its limit, and hand the files to ``ServiceState.classify``:
decoded in threads, then a forward pass shared with concurrent requests.
"""
from __future__ import annotations

import asyncio
import base64
import threading
from typing import Any, Literal, Optional

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

import medzero

from .. import schemas
from ..errors import ApiError, InternalError, error_for
from ..options import FORM_FIELDS, option_query, parse_options
from ..state import ServiceState, state_of
from ..uploads import lease_of, read_upload
from .common import ERRORS, authorized, upload_body

__all__ = ["router"]

router = APIRouter(tags=["classify"], dependencies=[Depends(authorized)])

#: One explanation at a time: each costs about 50 image-tower passes, outside the shared batches.
_EXPLAINING = threading.BoundedSemaphore(1)


class ExplanationModel(BaseModel):
    """One label's heatmap (``Result.explanations[label]``) and its overlay picture."""

    model_config = ConfigDict(extra="ignore")

    method: str = Field(description="How the map was made: `occlusion` (score drop when a cell is hidden) or `gradient`")
    grid: list[list[float]] = Field(description="The map, rows top to bottom; larger means more evidence for the label")
    region: list[float] = Field(description="[x0, y0, x1, y1]: the rectangle of the image, in its own pixels, the grid covers "
                                "(the model input after resize and crop; it may reach past the edges where the model pads)")
    image_size: list[int] = Field(description="[width, height] of the uploaded image")
    score: float = Field(description="The label's score")
    png: str = Field(description="The overlay (image, map, label, score) as a base64 PNG, at most 1024 pixels wide")


class ExplainResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lang: Literal["en", "zh"]
    summary: Optional[str] = Field(description="The verdict and its reasons in one line, in `lang`")
    result: schemas.ResultModel
    explanations: dict[str, ExplanationModel] = Field(description="Per label, in the task's order")


_BATCH_HEADER = {200: {"headers": {"X-Medzero-Batch-Size": {
    "description": "How many sources shared this request's forward pass", "schema": {"type": "integer"}}}}}


def _early_options(state: ServiceState, request: Request, query: dict[str, Any]) -> None:
    # With a raw body every option is in the query string: a bad one is a 422 before the body is read.
    if not request.headers.get("content-type", "").lower().startswith("multipart/"):
        state.classifier(parse_options(query))


@router.post(
    "/v1/classify", response_model=schemas.ClassifyResponse, responses={**_BATCH_HEADER, **ERRORS},
    response_model_exclude_unset=True,  # keys the library leaves out (a task without a gate) stay out
    openapi_extra=upload_body(False, FORM_FIELDS),
)
async def classify(request: Request, response: Response, query: dict = Depends(option_query)):
    """Classify one recording or image: multipart (field `file`, options as fields or query) or the raw body.

    The content decides the modality (WAV, FLAC, Ogg, MP3, M4A/AAC, AMR, SILK, WebM; DICOM, PNG, JPEG, TIFF);
    raw headerless PCM has none, so `pcm_rate`, `pcm_format` or `pcm_channels` declares it.
    `X-Medzero-Batch-Size` says how many sources shared the forward pass.
    """
    state = state_of(request)
    config = state.config
    _early_options(state, request, query)
    state.check_room()  # a full queue answers before the body is read
    upload = await read_upload(request, config.max_upload_bytes, config.body_timeout_s, max_files=1)
    options = parse_options(query, upload)
    if len(upload.files) != 1 or not upload.files[0]:
        raise ApiError(400, "bad_input", "send one file: multipart field 'file', or the raw request body")
    (result, size), = await state.classify(options, [(upload.files[0], options.upload_name("upload"))], lease_of(request))
    if result.error is not None:
        raise error_for(result.exception, modality=result.modality)
    response.headers["X-Medzero-Batch-Size"] = str(size)
    return {"lang": options.lang, "summary": result.summary(options.lang), "result": result.to_dict()}


@router.post(
    "/v1/classify/batch", response_model=schemas.BatchResponse, responses=ERRORS,
    response_model_exclude_unset=True,  # keys the library leaves out (a task without a gate) stay out
    openapi_extra=upload_body(True, FORM_FIELDS),
)
async def classify_batch(request: Request, query: dict = Depends(option_query)):
    """Classify several files (multipart field `files`, repeated); results come back in upload order.

    A file that cannot be classified gets a result with `error` set; the others are unaffected.
    """
    state = state_of(request)
    config = state.config
    _early_options(state, request, query)
    state.check_room()
    max_files = min(config.max_batch_files, config.queue_size)
    upload = await read_upload(request, config.max_batch_bytes, config.body_timeout_s, max_files=max_files)
    options = parse_options(query, upload)
    if not upload.files:
        raise ApiError(400, "bad_input", "send the files as multipart/form-data, field 'files'")
    items = [(data, options.upload_name(f"upload-{i}")) for i, data in enumerate(upload.files, 1)]
    done = await state.classify(options, items, lease_of(request))
    results = []
    for result, _ in done:
        if result.exception is not None and not isinstance(result.exception, medzero.MedzeroError):
            result = medzero.Result.failed(result.source, InternalError("internal error"), modality=result.modality)
        results.append({"summary": result.summary(options.lang), "result": result.to_dict()})
    return {"lang": options.lang, "results": results}


@router.post(
    "/v1/explain", response_model=ExplainResponse, responses=ERRORS, response_model_exclude_unset=True,
    openapi_extra=upload_body(False, FORM_FIELDS),
)
async def explain(
    request: Request,
    query: dict = Depends(option_query),
    method: Literal["auto", "occlusion", "gradient"] = Query(
        "auto", description="occlusion (every backend; auto) or gradient (the torch backend only)"),
):
    """Classify one image and show why: per label, a heatmap over the image and its overlay as a PNG (base64).

    The same options and upload as `/v1/classify`. It costs about 50 passes of the image model
    (occlusion), runs one at a time (503 with Retry-After while another runs) and outside the
    shared batches. A recording is answered 422: heatmaps are for images.
    """
    state = state_of(request)
    config = state.config
    _early_options(state, request, query)
    state.check_room()
    upload = await read_upload(request, config.max_upload_bytes, config.body_timeout_s, max_files=1)
    options = parse_options(query, upload)
    if len(upload.files) != 1 or not upload.files[0]:
        raise ApiError(400, "bad_input", "send one image: multipart field 'file', or the raw request body")
    classifier = state.classifier(options)
    if not _EXPLAINING.acquire(blocking=False):
        raise ApiError(503, "busy", "another explanation is running; try again shortly", {"Retry-After": "5"})
    try:
        loop = asyncio.get_running_loop()
        # the loop's default pool, not the decode threads: an explanation must not hold up others' uploads
        job = loop.run_in_executor(None, _explain_one, classifier, upload.files[0],
                                   options.upload_name("upload"), method, options.lang)
        try:
            result, pictures = await asyncio.wait_for(asyncio.shield(job), config.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(503, "timeout", f"the explanation did not finish within {config.timeout_s:g} s",
                           {"Retry-After": "5"}) from None
    finally:
        _EXPLAINING.release()
    if result.error is not None:
        raise error_for(result.exception, modality=result.modality)
    if not result.explanations:
        why = "heatmaps are for images" if result.modality != "image" else "the task does not judge this image"
        raise ApiError(422, "not_explainable", f"no heatmap: {why} (this upload is {result.modality})")
    explanations = {label: {**data, "png": base64.b64encode(pictures[label]).decode("ascii")}
                    for label, data in result.explanations.items()}
    return {"lang": options.lang, "summary": result.summary(options.lang), "result": result.to_dict(),
            "explanations": explanations}


def _explain_one(classifier: Any, data: bytes, name: str, method: str, lang: str) -> tuple[Any, dict[str, bytes]]:
    """The result of one upload with heatmaps, and their PNG overlays (in a worker thread)."""
    result = classifier.classify_batch([medzero.Source.of(data, name=name)], explain=method)[0]
    pictures = medzero.explanation_overlays(result, data, lang=lang) if result.error is None else {}
    return result, pictures
