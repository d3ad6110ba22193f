"""Dataset-level analysis as pure functions over arrays (matrix now; correlations and baselines later)."""

from .matrix import MEANING, QUADRANTS, attention_matrix

__all__ = ["attention_matrix", "QUADRANTS", "MEANING"]
