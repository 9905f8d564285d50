"""medzero's Streamlit app, shipped in the package: ``medzero app`` starts it from any directory.

``main.py`` is the entry file (``st.navigation`` over the pages in this folder). Streamlit runs it,
and each page, as a script, so they import the package absolutely (``from medzero.app import common``)
and use only medzero's public names. Importing this module does not import Streamlit.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["ENTRY", "OPTIONS", "command", "run"]

#: The app's entry file, inside the installed package.
ENTRY = Path(__file__).resolve().with_name("main.py")

#: Streamlit settings the app always runs with, passed as command-line flags so that they hold from a
#: wheel in any working directory (Streamlit reads ``config.toml`` only from ``~/.streamlit/`` and the
#: working directory's ``.streamlit/``).
#: The server listens on this machine only, prints its URL instead of asking for an e-mail, caps
#: uploads at the library's audio limit (200 MB), sends no usage statistics and shows no Deploy button.
#: It watches no files: the app's scripts do not change while it runs, and a watcher on a large
#: working directory (a checkout with its .venv) floods the terminal with "Inotify queue overflowed".
OPTIONS: dict[str, str] = {
    "server.address": "127.0.0.1",
    "server.headless": "true",
    "server.maxUploadSize": "200",
    "server.fileWatcherType": "none",
    "browser.gatherUsageStats": "false",
    "client.toolbarMode": "viewer",
}


def command(args: list[str] | None = None, *, port: int | None = None, host: str | None = None) -> list[str]:
    """The ``streamlit run`` command line for the app.

    ``host`` and ``port`` set ``--server.address`` / ``--server.port`` (default 127.0.0.1 and
    Streamlit's 8501); ``args`` are further ``streamlit run`` flags, placed last so that they win.
    """
    options = dict(OPTIONS)
    if host is not None:
        options["server.address"] = host
    if port is not None:
        options["server.port"] = str(int(port))
    flags = [part for key, value in options.items() for part in (f"--{key}", value)]
    return [sys.executable, "-m", "streamlit", "run", str(ENTRY), *flags, *(args or [])]


def run(args: list[str] | None = None, *, port: int | None = None, host: str | None = None) -> int:
    """Run the app in a ``streamlit run`` subprocess until it stops; returns its exit status.

    A SIGTERM sent to this process is passed on to Streamlit, so stopping ``medzero app`` stops the server.
    """
    proc = subprocess.Popen(command(args, port=port, host=host))
    forwarding = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    if forwarding:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl+C reached Streamlit too (same process group): let it shut down on its own.
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    finally:
        if forwarding:
            signal.signal(signal.SIGTERM, previous)
