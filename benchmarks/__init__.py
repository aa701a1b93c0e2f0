"""Benchmarks of issue 6: ``python -m benchmarks [--quick] [--output FILE.json]``.

Each section times its variants in the same run with interleaved repeats and reports
medians as ratios against the bare call and against hand-inlined metric updates; targets
from the issue are printed as PASS/MISS and never fail the run.
"""
