"""medzero's version: one place that every layer may read (results, overlays and reports record it)."""

__version__ = "0.1.0"
