"""localjudge: audit a vision model's saliency maps at dataset scale with a local vision-language judge."""

__version__ = "0.1.0"

from . import offline  # noqa: E402,F401  (before any model library is imported)
