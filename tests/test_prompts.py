"""Prompt sets: the shipped ones load, schema errors name file, label and field, wheels carry them."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import medzero
from medzero.core.errors import TaskError
from medzero.tasks.schema import load_task, task_from_labels

ROOT = Path(__file__).resolve().parent.parent
GOOD = """
name: mine
modality: audio
mode: multilabel
templates: ["{}"]
labels:
  - id: hum
    name: {en: Hum, zh: 嗡嗡声}
    prompts: [an electrical hum]
    negatives: [silence]
    threshold: 0.4
"""


def test_shipped_tasks_load_with_names_in_both_languages():
    tasks = {t.name: t for t in medzero.list_tasks()}
    assert {"voice_quality", "audio_qc", "respiratory_sounds"} <= set(tasks)
    vq = tasks["voice_quality"]
    assert vq.modality == "audio" and vq.mode == "multilabel"
    for label in vq.labels:
        assert label.name.en and label.name.zh and label.name.zh != label.name.en, label.id
    assert {"snr_db", "clipping_ratio", "silence_ratio", "bandwidth_hz"} <= set(vq.metrics)
    assert [v.id for v in vq.verdicts][0] == "accept" and vq.verdicts[-1].name.zh == "建议复录"


def test_load_task_by_name_and_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD, encoding="utf-8")
    task = load_task(path)
    assert task.labels[0].threshold == 0.4 and task.source == str(path)
    assert load_task("voice_quality").name == "voice_quality"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (("threshold: 0.4", "threshold: 1.5"), "label 'hum': field 'threshold'"),
        (("prompts: [an electrical hum]", "prompts: []"), "label 'hum': field 'prompts'"),
        (("modality: audio", "modality: smell"), "field 'modality'"),
        (("    threshold: 0.4", "    threshold: 0.4\n    colour: red"), "label 'hum': field 'colour'"),
        (('templates: ["{}"]', 'templates: ["no slot"]'), "field 'templates'"),
        (("    negatives: [silence]\n", ""), "label 'hum'"),
        (("    negatives: [silence]", "    negatives: [silence]\n    verdict: panic"), "verdict 'panic'"),
    ],
)
def test_schema_errors_name_the_file_label_and_field(tmp_path, edit, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(*edit), encoding="utf-8")
    with pytest.raises(TaskError) as info:
        load_task(path)
    message = str(info.value)
    assert str(path) in message and expected in message
    assert "\n" not in message


def test_yaml_syntax_error_and_unknown_task(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(TaskError, match="invalid YAML at line"):
        load_task(path)
    with pytest.raises(TaskError, match="unknown task 'nope'.*voice_quality"):
        load_task("nope")


def test_adhoc_labels():
    task = task_from_labels("dog, cat ,bird", modality="audio")
    assert task.label_ids() == ["dog", "cat", "bird"]
    assert task.mode == "multiclass" and task.templates == ["This is a sound of {}."]
    assert task.positive_texts(task.labels[0]) == ["This is a sound of dog."]
    multi = task_from_labels(["dog"], modality="audio", template="{}", multilabel=True)
    assert multi.negative_texts(multi.labels[0]) == ["other sounds"]
    with pytest.raises(TaskError, match="at least two labels"):
        task_from_labels("dog", modality="audio")
    with pytest.raises(TaskError, match="no labels"):
        task_from_labels(" , ", modality="audio")


def test_shipped_prompts_work_from_an_installed_wheel(tmp_path):
    """The wheel carries prompts/*.yaml as medzero.prompts, and load_task finds them from there."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("medzero-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "medzero/prompts/voice_quality.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import medzero, medzero.tasks.schema as p; "
        "assert medzero.__file__.startswith(%r), medzero.__file__; "
        "print(sorted(t.name for t in medzero.list_tasks()))" % str(site)
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        check=True, capture_output=True, text=True,
    ).stdout
    assert "voice_quality" in out and "respiratory_sounds" in out
