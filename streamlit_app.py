"""The app's entry file where Streamlit's own tooling looks for it: ``streamlit run streamlit_app.py``.

The app itself ships inside the package (``medzero/app/main.py``, which ``medzero app`` and
``make app`` run with the settings of :data:`medzero.app.OPTIONS`); this file only runs it, so a
checkout, Streamlit Community Cloud and ``streamlit run`` all show the same app.
"""
import runpy

from medzero.app import ENTRY

runpy.run_path(str(ENTRY), run_name="__main__")
