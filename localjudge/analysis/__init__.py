"""Dataset-level analysis as pure functions over arrays: the 2x2 matrix, region agreement, faithfulness metrics,
correlations and label-issue detection (one module each)."""

from .matrix import MEANING, QUADRANTS, attention_matrix

__all__ = ["attention_matrix", "QUADRANTS", "MEANING"]
