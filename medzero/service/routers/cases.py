"""Case search: ``POST /v1/index/{name}/search`` (by text or by an example file) and
``POST /v1/index/{name}/cases`` (add files), over the case indexes under ``--index-root``.

Index work runs on the state's one index thread. Paths in answers are relative to the index
(``uploads/<sha256>``): a client never sees where the server keeps its files.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

import medzero

from .. import schemas
from ..errors import ApiError, error_for, undecodable, validation_line
from ..options import flag
from ..state import state_of
from ..uploads import named, read_stream, read_upload
from .common import ERRORS, authorized, upload_body

__all__ = ["router"]

router = APIRouter(tags=["case search"], dependencies=[Depends(authorized)])

_JSON_LIMIT = 64 * 1024
#: The options of a search by example as multipart form fields, for the OpenAPI request body.
_EXAMPLE_FIELDS = {
    "k": {"type": "integer", "minimum": 1, "maximum": 100}, "where": {"type": "string"}, "exact": {"type": "boolean"},
}
_NOT_FOUND = {404: {"model": schemas.ErrorResponse}}


@router.post(
    "/v1/index/{name}/search", response_model=schemas.SearchResponse, responses={**ERRORS, **_NOT_FOUND},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": schemas.SearchRequest.model_json_schema()},
        **upload_body(False, _EXAMPLE_FIELDS)["requestBody"]["content"],
    }}},
)
async def search(
    request: Request,
    name: str,
    k: int = Query(5, ge=1, le=100, description="Example search: how many cases"),
    where: Optional[list[str]] = Query(None, description="Example search: filters, e.g. ViewPosition=PA"),
    exact: bool = Query(False, description="Example search: scan every stored vector"),
):
    """Cases most like a text (JSON body `{"text": ...}`) or like an example file (multipart `file` or raw body)."""
    state = state_of(request)
    config = state.config
    path = state.index_dir(name, must_exist=True)
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        buf = bytearray()
        await read_stream(request, _JSON_LIMIT, config.body_timeout_s, buf.extend)
        try:
            query = schemas.SearchRequest.model_validate_json(bytes(buf))
        except ValidationError as exc:
            raise ApiError(422, "invalid_request", validation_line(exc.errors())) from None
        run = _search_text
        args: tuple = (query.text, query.k, query.modality, query.where, query.exact)
    else:
        upload = await read_upload(request, config.max_upload_bytes, config.body_timeout_s, max_files=1)
        if len(upload.files) != 1 or not upload.files[0]:
            raise ApiError(400, "bad_input", "send a JSON text query, or one example file")
        unknown = sorted(set(upload.fields) - set(_EXAMPLE_FIELDS))
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown form field(s): {', '.join(unknown)}")
        if upload.field("k") is not None:
            try:
                k = int(upload.field("k"))
            except ValueError:
                raise ApiError(422, "invalid_request", "k: expected an integer") from None
            if not 1 <= k <= 100:
                raise ApiError(422, "invalid_request", "k: between 1 and 100")
        where = upload.fields.get("where", where)
        exact = flag(upload.field("exact")) if upload.field("exact") is not None else exact
        example = medzero.Source.of(named(upload.files[0], "upload"), name="upload")  # sniffed once, here
        if example.error is not None:
            raise error_for(example.error, modality="unknown" if example.modality is None else example.modality)
        run = _search_example
        args = (example, k, where, exact)

    def work():
        index = state.open_index(name, path)
        return [_relative(hit.to_dict(), str(path)) for hit in run(index, *args)]

    try:
        hits = await state.in_index_thread(work)
    except medzero.MedzeroError as exc:
        raise error_for(exc) from None
    except Exception as exc:  # noqa: BLE001 - an example the decoders did not foresee costs a 400, not a 500
        if run is not _search_example:
            raise
        raise error_for(undecodable("upload", exc)) from None
    return {"hits": hits}


@router.post(
    "/v1/index/{name}/cases", response_model=schemas.AddReportModel,
    responses={**ERRORS, **_NOT_FOUND, 409: {"model": schemas.ErrorResponse}},
    openapi_extra=upload_body(True, {"task": {"type": "string"}}),
)
async def add_cases(request: Request, name: str, task: Optional[str] = Query(None, description="Also store this task's scores with each case")):
    """Add files to the case index `{name}` (created on first add). Files are kept in the index as `uploads/<sha256>`."""
    state = state_of(request)
    config = state.config
    path = state.index_dir(name, must_exist=False)
    max_files = config.max_batch_files
    upload = await read_upload(request, config.max_batch_bytes, config.body_timeout_s, max_files=max_files)
    unknown = sorted(set(upload.fields) - {"task"})
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown form field(s): {', '.join(unknown)}")
    task = upload.field("task") or task
    if task is not None and task not in state.tasks:
        raise ApiError(422, "invalid_request", f"unknown task {task!r}; shipped tasks: {', '.join(sorted(state.tasks))}")
    if not upload.files or not all(upload.files):
        raise ApiError(400, "bad_input", "send the files as multipart/form-data (field 'files') or one raw body")

    def work():
        index = state.open_index(name, path)
        return _add_cases(index, path, upload.files, state.tasks[task] if task is not None else None)

    try:
        report = await state.in_index_thread(work)
    except medzero.MedzeroError as exc:
        raise error_for(exc, conflict=True) from None
    return report


def _search_text(index: Any, text: str, k: int, modality: Optional[str], where: Any, exact: bool) -> list:
    return index.search_text(text, k, modality=modality, where=where, exact=exact)


def _search_example(index: Any, example: Any, k: int, where: Any, exact: bool) -> list:
    return index.search_example(example, k, where=where, exact=exact)


def _add_cases(index: Any, path: Path, blobs: list[bytes], task: Any) -> dict[str, Any]:
    """Keep each upload as ``uploads/<sha256>`` in the index (hits must point at a file) and add them."""
    uploads = path / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    paths, created = [], []
    for data in blobs:
        target = uploads / hashlib.sha256(data).hexdigest()
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            created.append(target)
        paths.append(str(target))
    report = index.add(paths, task=task).to_dict()
    failed = {entry["path"] if isinstance(entry, dict) else entry[0] for entry in report["errors"]}
    for target in created:  # a file that could not be added is not kept
        if str(target) in failed or os.path.abspath(target) in failed:
            target.unlink(missing_ok=True)
    return _relative(report, str(path))


def _relative(value: Any, base: str) -> Any:
    """Paths inside the index directory as relative paths (``uploads/<sha256>``), in any JSON value."""
    prefix = base.rstrip(os.sep) + os.sep
    if isinstance(value, str):
        return value.replace(prefix, "")
    if isinstance(value, list):
        return [_relative(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _relative(v, base) for k, v in value.items()}
    return value
