"""Data: the bundled real handwritten digits and their train/test tasks."""

from .digits import DigitsTask, digits_task, load_digits, stratified_split

__all__ = ["load_digits", "stratified_split", "digits_task", "DigitsTask"]
