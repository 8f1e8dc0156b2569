"""Every test runs on every array backend available, and the Hypothesis profiles.

Backends
--------
Each test runs once per backend: ``numpy``, ``strict`` (the stand-in for
CuPy, :mod:`minitspeft.strict_xp`, which raises on any implicit trip to the
host from the package's code) and ``cupy`` where CuPy imports and sees a GPU.
The test ids say which (``test_x[strict]``). The fixture selects the backend
for the test and sets ``MINITSPEFT_BACKEND`` for the subprocesses it starts,
then restores both.

- ``MINITSPEFT_BACKEND=strict python -m pytest`` runs on that backend alone.
- ``@pytest.mark.backends("numpy")`` limits a test to the backends named
  (a test of NumPy-only behaviour, or one that chooses its backend itself).

Running twice over is why the suite is spread over the cores with
pytest-xdist (``-n auto`` in ``pyproject.toml``); each worker then uses one
BLAS thread. ``python -m pytest -n 0`` runs in one process.

Hypothesis
----------
The property tests (``tests/test_properties.py``) use one of two profiles:

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

import pytest
from hypothesis import settings

import minitspeft as mt


def available_backends() -> list:
    """The backends this run tests on: ``MINITSPEFT_BACKEND`` alone if set, else numpy, strict (and cupy)."""
    chosen = os.environ.get("MINITSPEFT_BACKEND", "").strip()
    if chosen:
        return [chosen]
    return ["numpy", "strict"] + (["cupy"] if mt.backend.gpu_available() else [])


BACKENDS = available_backends()

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several test processes sharing the cores
    from threadpoolctl import threadpool_limits

    _ONE_BLAS_THREAD = threadpool_limits(limits=1, user_api="blas")  # measured fastest under contention
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")  # ... and for the subprocesses the tests start


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run this test only on the backends named")


def pytest_generate_tests(metafunc):
    if "array_backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    names = [b for b in BACKENDS if marker is None or b in marker.args]
    if not names:  # e.g. a NumPy-only test in a run on strict alone
        names = [pytest.param(marker.args[0], marks=pytest.mark.skip(
            reason=f"runs on {', '.join(marker.args)} only; this run tests {', '.join(BACKENDS)}"))]
    metafunc.parametrize("array_backend", names, indirect=True)


def pytest_collection_modifyitems(config, items):
    """Drop the cases whose own ``backends`` mark (set on one ``pytest.param``) excludes their backend."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("backends")
        name = getattr(item, "callspec", None) and item.callspec.params.get("array_backend")
        (drop if marker is not None and name and name not in marker.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def array_backend(request, monkeypatch):
    """The backend this test runs on (see the module docstring); restored afterwards."""
    name = getattr(request, "param", "numpy")
    before = mt.get_backend()
    mt.set_backend(name)
    monkeypatch.setenv("MINITSPEFT_BACKEND", name)
    yield name
    mt.set_backend(before)

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
