"""The shape of the house: layering, plug-ins, the one ingest path, and the case index's parts alone."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medzero
from medzero.cli import main
from medzero.core import ingest, sniff
from medzero.core.errors import CaseIndexError
from test_retrieval import unit

PACKAGE = Path(medzero.__file__).parent

# -- the layers: one table of allowed edges -------------------------------------------------------
#
# Each part of the package, and the parts it may import beside itself. Lowest first: core holds the
# contracts every layer shares; encoders load models; tasks hold prompt sets, scoring and overlays;
# audio and image are modality plug-ins, found through core's registry and never imported by name
# below them; classifier and retrieval are the two fronts of the library; the rest serve them.
# "medzero" is the package root: the public API and the composition root that declares plug-ins,
# schemes and engines by import path. Imports inside ``if TYPE_CHECKING:`` are not edges (they never
# run); imports inside functions are.
_BELOW_PLUGINS = {"core", "encoders", "tasks"}
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "encoders": {"core"},
    "tasks": {"core", "encoders"},
    "audio": _BELOW_PLUGINS,
    "image": _BELOW_PLUGINS,
    "classifier": _BELOW_PLUGINS,
    "retrieval": _BELOW_PLUGINS,
    "distributed": _BELOW_PLUGINS | {"classifier", "retrieval"},
    "evaluation": _BELOW_PLUGINS | {"classifier"},
    "pacs": _BELOW_PLUGINS | {"image", "classifier", "retrieval", "medzero"},
    "service": _BELOW_PLUGINS | {"classifier", "retrieval", "evaluation", "medzero"},
    "cli": _BELOW_PLUGINS | {"classifier", "retrieval", "evaluation", "distributed", "pacs", "service", "app", "medzero"},
    "app": {"medzero"},  # the Streamlit pages: the public API only
    "medzero": {"core"},  # eagerly: the registries it declares into; everything else by import path, lazily
}


def _part(module: str) -> str:
    """The row of :data:`ALLOWED` a module belongs to: ``medzero.core.ingest`` -> ``core``."""
    parts = module.split(".")
    return "medzero" if len(parts) == 1 else parts[1]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports_of(module: str) -> list[tuple[str, tuple[str, ...], int]]:
    """``(imported module, names taken from it, line)`` for each runtime import in ``module``.

    ``from pkg import name`` counts as importing ``pkg.name`` where that is a module, else ``pkg``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("medzero"):
                continue
            plain = []
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    found.append((f"{source}.{alias.name}", (), node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                found.append((source, tuple(plain), node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, (), node.lineno) for a in node.names if a.name.startswith("medzero"))
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_table_itself_has_no_cycle():
    order: list[str] = []
    while len(order) < len(ALLOWED):
        ready = sorted(p for p, deps in ALLOWED.items() if p not in order and deps - {"medzero"} <= set(order))
        assert ready, f"the table has a cycle among {sorted(set(ALLOWED) - set(order))}"
        order.extend(ready)


def test_every_part_is_in_the_table():
    assert {_part(m) for m in MODULES} == set(ALLOWED)


def test_imports_follow_the_table():
    bad = []
    for module in MODULES:
        mine = _part(module)
        for target, _, line in _imports_of(module):
            theirs = _part(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} {mine} -> {target}")
    assert bad == [], "\n".join(bad)


def _defined_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def test_no_private_name_crosses_a_package():
    """Neither ``from other.part import _name`` (a private module counts) nor ``obj._name`` where
    ``_name`` is defined only in another part: a part's privates are its own to change."""
    defined: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        defined.setdefault(_part(module), set()).update(_defined_names(path))
    elsewhere = {part: set().union(*(n for p, n in defined.items() if p != part)) - names for part, names in defined.items()}
    bad = []
    for module, path in MODULES.items():
        mine = _part(module)
        where = path.relative_to(PACKAGE.parent)
        for target, names, line in _imports_of(module):
            if _part(target) != mine:
                private = [n for n in names if _is_private(n)] + [p for p in target.split(".") if _is_private(p)]
                bad.extend(f"{where}:{line} imports {target}: {n}" for n in private)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr in elsewhere[mine]:
                bad.append(f"{where}:{node.lineno} reads .{node.attr} of another part's object")
    assert bad == [], "\n".join(bad)


def test_no_import_cycle_at_runtime():
    """Between modules, counting imports inside functions: a cycle works only by the order modules
    happen to load in, and hides an edge that goes the wrong way. (A module importing the package
    it sits in is not counted: that package's ``__init__`` is already loading.)"""
    graph = {m: {t for t, _, _ in _imports_of(m) if t in MODULES and t != m and not m.startswith(t + ".")} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = [stack.pop()]
            while component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == [], "\n".join(" <-> ".join(c) for c in cycles)


def test_image_loaders_do_not_import_each_other():
    assert not any(t.startswith("medzero.image.io") for t, _, _ in _imports_of("medzero.image.dicom"))


def test_modalities_register_themselves():
    names = [m.name for m in medzero.modalities()]
    assert names == ["audio", "image"]
    audio = medzero.get_modality("audio")
    assert "snr_db" in audio.metric_info and audio.postprocess is not None
    assert medzero.get_modality("image").default_task == "chest_xray_findings"
    with pytest.raises(medzero.MedzeroError, match="unknown modality 'smell'; known: audio, image"):
        medzero.get_modality("smell")


def test_models_and_images_work_without_pyav():
    """A trimmed install without PyAV still lists every model and classifies nothing wrongly."""
    code = (
        "import sys, json; sys.modules['av'] = None\n"
        "import medzero\n"
        "models = sorted({m.modality for m in medzero.list_models()})\n"
        "print(json.dumps({'models': models, 'modalities': [m.name for m in medzero.modalities()]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"models": ["audio", "image"], "modalities": ["audio", "image"]}


def _count_sniffs(monkeypatch) -> list[int]:
    calls = [0]
    real = sniff._sniff_image

    def counting(head):
        calls[0] += 1
        return real(head)

    monkeypatch.setattr(sniff, "_sniff_image", counting)
    return calls


def test_each_file_is_sniffed_once(monkeypatch, tmp_path, audio_clips, dicom_files, tiny_clap_dir, tiny_hf_clip_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes(audio_clips["speech"].read_bytes())
    (folder / "b.mp3").write_bytes(audio_clips["mp3"].read_bytes())
    (folder / "c.dcm").write_bytes(dicom_files["phi"].read_bytes())
    models = {"audio_model": str(tiny_clap_dir), "image_model": f"local-dir:{tiny_hf_clip_dir}"}
    classifier = medzero.Classifier(labels="speech,noise", device="cpu", **models)
    classifier.classify_batch([folder])  # load the models outside the count
    calls = _count_sniffs(monkeypatch)
    results = classifier.classify_batch([folder])
    assert [r.error for r in results] == [None, None, None] and calls[0] == 3

    calls[0] = 0
    with medzero.CaseIndex(tmp_path / "ix", device="cpu", **models) as index:
        report = index.add([folder])
    assert len(report.added) == 3 and calls[0] == 3


def test_text_query_is_never_taken_for_a_file(tmp_path, audio_clips, tiny_clap_dir):
    with medzero.CaseIndex(tmp_path / "ix", audio_model=str(tiny_clap_dir), device="cpu") as index:
        index.add([audio_clips["speech"], audio_clips["noise"]])
        by_example = index.search_example(str(audio_clips["speech"]), k=1)
        assert by_example[0].path == str(audio_clips["speech"]) and by_example[0].score == pytest.approx(1.0, abs=1e-4)
        # The same string as words is embedded as text: it does not find the file with score 1.
        as_text = index.search_text(str(audio_clips["speech"]), k=1)
        assert as_text[0].score < 0.99
        with pytest.raises(medzero.BadInputError, match="search_text takes words"):
            index.search_text(audio_clips["speech"].read_bytes())


def test_write_lock_alone(tmp_path):
    from medzero.retrieval.locking import WriteLock

    first, second = WriteLock(tmp_path), WriteLock(tmp_path)
    with first.hold() as outermost:
        assert outermost
        with first.hold() as inner:  # re-entrant within one holder
            assert not inner
        with pytest.raises(CaseIndexError, match=rf"being written by another process \(pid {os.getpid()}\)"):
            with second.hold():
                pass
        assert second.other_writer_active()
    assert not first.held
    with second.hold():
        assert second.held


def test_consistency_core_alone(tmp_path):
    """SpaceSet with generated vectors: commit, reopen, lose the FAISS file, delete: always the database's truth."""
    from medzero.retrieval.locking import WriteLock
    from medzero.retrieval.spaces import SpaceSet
    from medzero.retrieval.store import Store

    def open_set():
        store = Store(str(tmp_path / "cases.sqlite"))
        return store, SpaceSet(tmp_path, store, WriteLock(tmp_path), readonly=False, approx_threshold=10_000, checkpoint_s=60)

    x = unit(np.random.default_rng(3), 300, 16)
    store, spaces = open_set()
    spaces.sync(opening=True)
    row = spaces.row_for("audio", "gen@1", 16, None)
    with spaces.lock.hold():
        ids = spaces.insert([(row, {"path": f"/c/{i}", "sha256": str(i), "vector": v, "metadata": {}}) for i, v in enumerate(x)])
        spaces.save(force=True)
    assert len(ids) == 300
    store.close()

    (tmp_path / f"space-{row.space}.faiss").unlink()  # lost: rebuilt from the stored vectors on open
    store, spaces = open_set()
    spaces.sync(opening=True)
    space = spaces.for_modality("audio")
    hits = spaces.search(space, x[7:8], 3, [], exact=False)
    assert hits[0].id == ids[7] and hits[0].path == "/c/7"
    with spaces.lock.hold():
        spaces.delete([(ids[7], row.space)])
    assert ids[7] not in {h.id for h in spaces.search(space, x[7:8], 10, [], exact=False)}
    assert store.count() == 299
    store.close()


def test_every_index_subcommand_takes_the_model_options(tmp_path, capsys, audio_clips, tiny_clap_dir, tiny_hf_clip_dir):
    idx = str(tmp_path / "idx")
    options = ["--audio-model", str(tiny_clap_dir), "--image-model", f"local-dir:{tiny_hf_clip_dir}", "--device", "cpu"]
    assert main(["index", "add", idx, str(audio_clips["speech"]), *options]) == 0
    capsys.readouterr()
    assert main(["index", "search", idx, "speech", *options, "--format", "json"]) == 0
    assert [h["path"] for h in json.loads(capsys.readouterr().out)] == [str(audio_clips["speech"])]
    assert main(["index", "stats", idx, *options]) == 0
    assert json.loads(capsys.readouterr().out)["cases"] == 1
    assert main(["index", "remove", idx, "1", *options]) == 0
    assert "removed 1 case(s); 0 left" in capsys.readouterr().out
