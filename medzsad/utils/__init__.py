"""Small helpers every layer may use (data, engine, tracking): atomic file writes and CSV tables.

This package imports nothing else of medzsad, so any package can depend on it without a cycle.
"""

from medzsad.utils.files import atomic_path, atomic_write_bytes, atomic_write_text
from medzsad.utils.tables import csv_text, write_csv

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "csv_text", "write_csv"]
