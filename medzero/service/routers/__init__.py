"""The service's routes, one ``APIRouter`` per group, included in this order by ``create_app``.

``health`` (``/healthz``, ``/readyz``), ``classify`` (``/v1/classify``, ``/v1/classify/batch``),
``catalogue`` (``/v1/tasks``, ``/v1/models``) and ``cases`` (``/v1/index/{name}/search``,
``/v1/index/{name}/cases``). Each route reaches the running app's
:class:`~medzero.service.state.ServiceState` through ``state_of(request)``; what they share (the
bearer check, the documented error responses, the upload bodies of the OpenAPI spec) is in
:mod:`.common`.
"""
from __future__ import annotations

from . import cases, catalogue, classify, health

__all__ = ["ROUTERS"]

#: In the order of the served OpenAPI spec (docs/openapi.json).
ROUTERS = (health.router, classify.router, catalogue.router, cases.router)
