"""fastops benchmarks: ``python -m bench`` runs every ``bench/bench_*.py`` module.

See :mod:`bench.common` for the per-op module interface (``OP``, optional ``LEVEL``,
``run(ctx) -> list[Row]``), the timing, ceiling, memory and correctness rules, and the results
files. Benchmarks are never part of the test suite.
"""
