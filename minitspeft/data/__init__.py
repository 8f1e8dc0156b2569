"""Data: the bundled real handwritten digits, the synthetic needle task, and their splits."""

from .digits import DigitsTask, digits_task, load_digits, stratified_split
from .needle import CLS, MARKER, NEEDLE_VOCAB, NeedleTask, make_needle, needle_task

__all__ = ["load_digits", "stratified_split", "digits_task", "DigitsTask",
           "needle_task", "make_needle", "NeedleTask", "NEEDLE_VOCAB", "MARKER", "CLS"]
