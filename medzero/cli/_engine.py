"""``--engine local|ray`` and its options, shared by ``medzero classify`` and ``medzero index add``."""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from ..core.errors import MedzeroError
from ._common import fail

__all__ = ["engine_options", "ray_session"]


def engine_options(command: Callable) -> Callable:
    """``--engine``, ``--address``, ``--actors``, ``--gpus-per-actor``, passed as ``engine``: a
    :class:`~medzero.distributed.RayEngine` (its ``options`` from the flags) for ``--engine ray``,
    ``None`` for the local engine. Without the ray extra, ``--engine ray`` is a one-line error
    naming it, before any model loads."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        engine, address, actors, gpus = (kwargs.pop(k) for k in ("engine", "address", "actors", "gpus_per_actor"))
        kwargs["engine"] = None
        if engine == "ray":
            from ..distributed import RayEngine, RayOptions, require_ray

            try:
                require_ray()
            except MedzeroError as exc:
                raise fail(str(exc))
            kwargs["engine"] = RayEngine(RayOptions(address=address, actors=actors, gpus_per_actor=gpus))
        elif address is not None or actors is not None or gpus is not None:
            raise fail("--address, --actors and --gpus-per-actor go with --engine ray", 2)
        return command(*args, **kwargs)

    for option in reversed(
        (
            click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
                         help="local: this process. ray: a Ray cluster (pip install 'medzero[ray]'); see docs/scaling.md."),
            click.option("--address", metavar="auto|ray://HOST:PORT",
                         help="Ray engine: the cluster (default: RAY_ADDRESS, else a Ray started on this machine)."),
            click.option("--actors", type=click.IntRange(min=1),
                         help="Ray engine: embedding actors, each loading the models once (default: one per GPU, else one per two CPUs)."),
            click.option("--gpus-per-actor", type=click.FloatRange(min=0),
                         help="Ray engine: GPUs per actor (default: 1 when the cluster has GPUs, else 0)."),
        )
    ):
        wrapper = option(wrapper)
    return wrapper


@contextmanager
def ray_session(options) -> Iterator[None]:
    """Join or start the cluster for one command; a Ray started here stops when it ends.

    On a terminal the command's own bar counts files as their results come back, so Ray Data's
    per-stage bars and log lines are turned off; elsewhere (batch jobs, log files) Ray Data logs its
    progress every few seconds.
    """
    import ray
    from rich.console import Console

    from ..distributed import connect

    started = connect(options.address)
    if Console(stderr=True).is_terminal:
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its start and finish lines would break the bar
    try:
        yield
    finally:
        if started:
            ray.shutdown()
