"""Print the service's OpenAPI document: ``python -m medzero.service.openapi > docs/openapi.json``.

The committed ``docs/openapi.json`` is this output; a test fails when the two differ.
"""
from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["spec", "render"]


def spec() -> dict[str, Any]:
    """The OpenAPI document of :func:`medzero.service.app.create_app` (no server is started)."""
    from .app import ServiceConfig, create_app

    return create_app(ServiceConfig(insecure_no_auth=True)).openapi()


def render() -> str:
    return json.dumps(spec(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
