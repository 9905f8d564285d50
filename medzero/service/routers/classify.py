"""``POST /v1/classify`` (one file) and ``POST /v1/classify/batch`` (several, an error row per bad file).

Both check their options and the queue before the body is read (a raw body's options are all in the
query string), read the upload within its limit, and hand the files to ``ServiceState.classify``:
decoded in threads, then a forward pass shared with concurrent requests.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

import medzero

from .. import schemas
from ..errors import ApiError, InternalError, error_for
from ..options import FORM_FIELDS, option_query, parse_options
from ..state import ServiceState, state_of
from ..uploads import lease_of, read_upload
from .common import ERRORS, authorized, upload_body

__all__ = ["router"]

router = APIRouter(tags=["classify"], dependencies=[Depends(authorized)])

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
