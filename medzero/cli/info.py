"""``medzero tasks`` and ``medzero models``: what ships and what is registered."""
from __future__ import annotations

import json

import click

from ..core.errors import MedzeroError
from ..core.modality import modality_names
from ._common import fail


@click.command()
@click.option("--modality", type=click.Choice(modality_names()))
@click.option("--format", "fmt", default="table", type=click.Choice(["table", "json"]), show_default=True)
@click.option("--lang", default="en", show_default=True, type=click.Choice(["en", "zh"]))
def tasks(modality, fmt, lang):
    """List the shipped prompt sets and their labels."""
    from ..core.prompts import list_tasks

    try:
        found = [t for t in list_tasks() if modality in (None, t.modality)]
    except MedzeroError as exc:
        raise fail(str(exc))
    if fmt == "json":
        click.echo(json.dumps([t.model_dump(mode="json") for t in found], ensure_ascii=False, indent=2))
        return
    for t in found:
        verdicts = " / ".join(v.id for v in t.verdicts) or "top label"
        click.echo(f"{t.name}  ({t.modality}, {t.mode}; verdicts: {verdicts})")
        if t.description:
            click.echo(f"    {t.description.get(lang)}")
        for label in t.labels:
            click.echo(f"    - {label.id}: {label.display(lang)}  [{label.polarity}, threshold {label.threshold:.2f}]")
        for metric, rule in t.metrics.items():
            limits = ", ".join(f"{k} {v:g}" for k, v in (("min", rule.min), ("max", rule.max)) if v is not None)
            click.echo(f"    * {metric}: {limits}")


@click.command()
@click.option("--modality", type=click.Choice(modality_names()))
def models(modality):
    """List the registered models (any local directory or hub id works too)."""
    from ..core.encoder import default_model, list_models

    for cfg in list_models(modality):
        mark = "*" if cfg.name == default_model(cfg.modality) else " "
        rev = f"@{cfg.revision}" if cfg.revision else ""
        click.echo(f"{mark} {cfg.name:<22} {cfg.modality:<6} {cfg.hub_id}{rev}  {cfg.description}")
