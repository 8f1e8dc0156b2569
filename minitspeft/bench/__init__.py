"""``python -m minitspeft.bench``: step time and memory of a LoRA / TS-LoRA training step.

- :mod:`~minitspeft.bench.config`: the configurations (``bench-small``, ``tiny``);
- :mod:`~minitspeft.bench.steps`: the step in minitspeft's public API, forced gate densities, and what
  the twins copy from it;
- :mod:`~minitspeft.bench.torch_twin`, :mod:`~minitspeft.bench.autograd_twin`: the same step in PyTorch
  and in HIPS autograd, from the same weights (imported only by the worker process and the tests);
- :mod:`~minitspeft.bench.measure`: timing and peak memory, each case in a fresh process;
- :mod:`~minitspeft.bench.__main__`: the command line, the tables and the JSON.

Speed numbers live here, never in timed tests; the test suite runs the
``tiny`` configuration once as a smoke test.
"""
