"""Hypothesis profiles for the property tests (``tests/test_properties.py``).

- ``dev`` (the default on a workstation): 100 examples per test.
- ``ci``: 12 examples per test, derandomized so that a CI run is
  reproducible, and no example database written.

Both keep ``deadline=None``: timing never fails a test. The profile is
chosen by ``HYPOTHESIS_PROFILE`` (``dev`` or ``ci``); without it, ``ci`` is
used when the environment variable ``CI`` is set (to anything but an empty
string, ``0``, ``false`` or ``no``), else ``dev``.

Run ``HYPOTHESIS_PROFILE=ci python -m pytest tests/test_properties.py`` to
reproduce CI locally.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True, database=None,
                          print_blob=True)


def _profile_name() -> str:
    explicit = os.environ.get("HYPOTHESIS_PROFILE", "").strip()
    if explicit:
        return explicit
    ci = os.environ.get("CI", "").strip().lower()
    return "ci" if ci not in ("", "0", "false", "no") else "dev"


settings.load_profile(_profile_name())
