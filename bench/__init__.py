"""fastops benchmarks: ``python -m bench`` (a checkout) or ``python -m fastops.bench`` (installed:
setup.py installs this folder as the package ``fastops._bench``) runs every ``bench_*.py`` module.

See :mod:`bench.common` for the per-op module interface (``OP``, optional ``LEVEL``,
``run(ctx) -> list[Row]``, relative imports) and the files that do the timing, ceilings, memory,
correctness checks and results. Benchmarks are never part of the test suite.
"""
