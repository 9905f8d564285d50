"""The app ships in the package: its command line, its imports, and ``medzero app`` from an installed wheel.

The wheel test builds the wheel from a clean copy of the source tree (a checkout's ``build/`` folder
would add stale modules to it), installs it with ``pip install --target``, and starts ``medzero app``
from a folder outside the repository, with no ``.streamlit/config.toml`` in reach. The test's Python
is the development one, whose editable install would fill in any module the wheel lacks from the
checkout; a ``sitecustomize`` removes that finder, so only the wheel's files can be imported.
"""
from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

import medzero.app

ROOT = Path(__file__).resolve().parent.parent
#: Run at start-up by every Python the wheel test starts (the app's Streamlit process too).
SITECUSTOMIZE = """\
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
"""
APP_FILES = ["__init__.py", "main.py", "common.py", "voice.py", "xray.py", "search.py", "models.py", "model_check.py"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_runs_main_py_with_the_app_settings():
    cmd = medzero.app.command()
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(medzero.app.ENTRY)]
    assert medzero.app.ENTRY.is_file()
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert flags == {
        "--server.address": "127.0.0.1",
        "--server.headless": "true",
        "--server.maxUploadSize": "200",
        "--server.fileWatcherType": "none",
        "--browser.gatherUsageStats": "false",
        "--client.toolbarMode": "viewer",
    }
    cmd = medzero.app.command(["--server.fileWatcherType", "none"], port=8600, host="0.0.0.0")
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert flags["--server.address"] == "0.0.0.0" and flags["--server.port"] == "8600"
    assert cmd[-2:] == ["--server.fileWatcherType", "none"]  # the caller's flags come last, so they win


def test_app_imports_only_public_names():
    for name in APP_FILES:
        tree = ast.parse((medzero.app.ENTRY.parent / name).read_text(encoding="utf-8"), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}:{node.lineno}: relative import (Streamlit runs the pages as scripts)"
                modules = [node.module or ""]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "medzero":
                assert node.attr not in {"core", "audio", "image", "retrieval", "classifier", "cli"}, \
                    f"{name}:{node.lineno}: medzero.{node.attr} is not public"
                continue
            else:
                continue
            for module in modules:
                if module.split(".")[0] == "medzero":  # the public names, or the app's own modules
                    assert module == "medzero" or module.split(".")[:2] == ["medzero", "app"], \
                        f"{name}:{node.lineno}: imports {module}"


@pytest.mark.timeout(600)
def test_medzero_app_starts_streamlit_from_an_installed_wheel(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".streamlit"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("medzero-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"medzero/app/{name}" for name in APP_FILES} <= names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"  # the working directory: no repository, no .streamlit/ folder
    elsewhere.mkdir()
    env = {"PYTHONPATH": os.pathsep.join([str(custom), str(site)]), "PATH": "/usr/bin:/bin", "HOME": str(elsewhere),
           "HF_HUB_OFFLINE": "1", "MEDZERO_CACHE_DIR": str(tmp_path / "cache")}

    # The entry file runs from the wheel: absolute imports, page paths, shipped prompt sets.
    code = (
        "import sys, medzero.app, medzero.cli; from streamlit.testing.v1 import AppTest; "
        "here = [m.__file__ for n, m in list(sys.modules.items()) if n.split('.')[0] == 'medzero' and getattr(m, '__file__', None)]; "
        "assert all(f.startswith(%r) for f in here), here; "
        "at = AppTest.from_file(str(medzero.app.ENTRY), default_timeout=120); at.run(); "
        "assert not at.exception, at.exception; print(at.title[0].value)" % str(site)
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("Voice quality")

    # `medzero app` (the wheel's console script) starts Streamlit, bound to 127.0.0.1 by default.
    port = _free_port()
    log_path = tmp_path / "streamlit.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(site / "bin" / "medzero"), "app", "--port", str(port)],
                                cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        body = ""
        while time.monotonic() < deadline and body != "ok":
            assert proc.poll() is None, f"medzero app exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.3)
        assert body == "ok", f"no answer from /_stcore/health:\n{log_path.read_text(errors='replace')[-3000:]}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert f"URL: http://127.0.0.1:{port}" in log_path.read_text(errors="replace")
    deadline = time.monotonic() + 15  # stopping `medzero app` stops the Streamlit server it started
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).close()
        except OSError:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the Streamlit server outlived `medzero app`")
