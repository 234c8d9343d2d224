"""Preference data: the built-in set, format readers (TRL, Anthropic HH, UltraFeedback) and checks."""

from alignkit.data.builtin import load_builtin
from alignkit.data.load import check_lengths, load_preference_data, normalize_rows, read_rows

__all__ = ["check_lengths", "load_builtin", "load_preference_data", "normalize_rows", "read_rows"]
