"""``medzero tasks`` and ``medzero models``: what ships, what is registered and on this machine, and model packs."""
from __future__ import annotations

import json
import os

import click

from ..core.errors import MedzeroError
from ..core.modality import modality_names
from ._common import fail, render_table


@click.command()
@click.option("--modality", type=click.Choice(modality_names()))
@click.option("--format", "fmt", default="table", type=click.Choice(["table", "json"]), show_default=True)
@click.option("--lang", default="en", show_default=True, type=click.Choice(["en", "zh"]))
def tasks(modality, fmt, lang):
    """List the shipped prompt sets and their labels."""
    from ..tasks.schema import list_tasks

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


_KIND = {
    "pack": "installed pack",
    "directory": "directory",
    "hub-cache": "Hugging Face cache",
    "hub": "hub",
    "missing": "missing",
}


def _availability_rows(modality: str | None) -> list[dict]:
    """One row per registered model, installed pack and configured reference: whether it is here and where from."""
    from ..encoders.factory import availability, default_model
    from ..encoders.installed import installed
    from ..encoders.registry import list_models

    rows, seen = [], set()

    def add(ref: str, mod: str, description: str = "", model: str = "") -> None:
        if (mod, ref) in seen:
            return
        seen.add((mod, ref))
        found = availability(ref, modality=mod)
        try:
            default = ref == default_model(mod)
        except MedzeroError:
            default = False
        if found.available:
            where = f"{_KIND.get(found.location.kind, found.location.kind)}: {found.where}"
            if found.location.kind == "hub":
                where = f"downloads on first use from {found.where}"
            elif found.location.kind == "pack":  # what the pack holds, not what the name would fetch
                pack = next((p for p in installed() if str(p.path) == found.where), None)
                if pack is not None:
                    model = pack.source + (f"@{pack.revision}" if pack.revision else "")
        else:
            where = f"not here: {found.why}"
        rows.append({
            "name": ref, "modality": mod, "default": default, "available": found.available,
            "from": found.location.kind, "where": where, "model": model, "description": description,
        })

    for cfg in list_models(modality):
        add(cfg.name, cfg.modality, cfg.description, cfg.hub_id + (f"@{cfg.revision}" if cfg.revision else ""))
    for p in installed():
        if modality in (None, p.modality):
            add(p.name, p.modality, "installed model pack", p.source + (f"@{p.revision}" if p.revision else ""))
    for mod in ([modality] if modality else modality_names()):
        try:
            add(default_model(mod), mod)
        except MedzeroError:
            pass
    return rows


@click.group(invoke_without_command=True)
@click.option("--modality", type=click.Choice(modality_names()))
@click.option("--format", "fmt", default="table", type=click.Choice(["table", "json"]), show_default=True)
@click.pass_context
def models(ctx, modality, fmt):
    """List the models and whether each is on this machine (and where from); pack, install, verify.

    Any local directory or hub id works as a model too. On a machine without internet, install a
    model pack made on a connected one: `medzero models pack NAME... -o models.tar` there, then
    `medzero models install models.tar` and `medzero models verify` here.
    """
    if ctx.invoked_subcommand is not None:
        return
    rows = _availability_rows(modality)
    if fmt == "json":
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = [
        (("*" if r["default"] else "") + r["name"], r["modality"], "yes" if r["available"] else "NO", r["where"], r["model"])
        for r in rows
    ]
    click.echo(render_table(["name (* default)", "modality", "available", "from", "model"], table), nl=False)
    if not all(r["available"] for r in rows):
        click.echo(
            "A model marked NO: run `medzero models pack NAME -o models.tar` on a connected machine, then "
            "`medzero models install models.tar` here; or pass a model folder with --audio-model / --image-model local-dir:/path."
        )


@models.command("pack")
@click.argument("names", nargs=-1, required=True, metavar="NAME[=DIR_OR_HUB_ID]...")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The pack to write (a .tar file).")
@click.option("--modality", type=click.Choice(modality_names()), help="For directories and hub ids that are not registered names.")
@click.option("--licence", "--license", "licences", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A licence file to carry in the pack (repeatable); the source's model card and LICENSE are included anyway.")
def pack_command(names, output, modality, licences):
    """Write the named models into one pack for a machine without internet.

    NAME is a registered name (`medzero models` lists them), a model directory or a hub id;
    NAME=DIR packs a directory under a name (e.g. clap-htsat-fused=/models/clap). Run it where the
    models load: it uses the Hugging Face cache and downloads what is missing.
    """
    from ..encoders.packs import pack

    try:
        entries = pack(list(names), output, modality=modality, licence_files=list(licences))
    except MedzeroError as exc:
        raise fail(str(exc))
    size = os.path.getsize(output)
    for e in entries:
        click.echo(f"packed {e['name']} ({e['modality']}, {e['fingerprint']}): {len(e['files'])} files")
    click.echo(f"wrote {output} ({size / 1e6:.1f} MB); on the offline machine: medzero models install {os.path.basename(output)}")


@models.command("install")
@click.argument("pack_path", metavar="PACK", type=click.Path())
@click.option("--name", help="Install a model directory under this name (a pack keeps its own names).")
@click.option("--modality", type=click.Choice(modality_names()), help="For a model directory that is not recognised.")
def install_command(pack_path, name, modality):
    """Install a model pack (or a model directory) where medzero finds it offline.

    Models go to $MEDZERO_MODELS_DIR (default: <medzero cache>/models/<name>). Every file is checked
    against the pack's sha256 first; a pack with a changed file installs nothing.
    """
    from ..encoders.packs import install

    try:
        done = install(pack_path, name=name, modality=modality)
    except MedzeroError as exc:
        raise fail(str(exc))
    for p in done:
        click.echo(f"installed {p.name} ({p.modality}, {p.fingerprint}) in {p.path}")


@models.command("verify")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--no-load", is_flag=True, help="Check the checksums only, without loading the models.")
def verify_command(names, no_load):
    """Check installed packs: every file's sha256, and that the preprocessing the loader really
    uses (image size, mean, std, interpolation; audio features; tokenizer) is the pack's."""
    from ..encoders.installed import installed, models_dir
    from ..encoders.packs import verify

    try:
        if not names and not installed():
            raise fail(f"no model packs are installed in {models_dir()}")
        checks = verify(list(names), load=not no_load)
    except MedzeroError as exc:
        raise fail(str(exc))
    for c in checks:
        if c.ok:
            click.echo(f"ok {c.name}: checksums match" + ("" if no_load else ", loads offline with the pack's preprocessing"))
    failed = [c for c in checks if not c.ok]
    for c in failed:
        click.echo(f"medzero: error: {c.name}: {c.problem}", err=True)
    if failed:
        raise click.exceptions.Exit(1)
