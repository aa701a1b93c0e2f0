"""The ``instrument demo`` tour and the local LLM server it calls.

Shipped with the package so ``instrument demo`` works from a wheel, but imported only by
the CLI's ``demo`` command: nothing in the library imports it. ``tour`` is the demo;
``llm_server`` the local server speaking the providers' wire formats (one module per
provider dialect beside it), which the tests also use.
"""

from __future__ import annotations

from .tour import quantile_of_buckets, run_demo, summarize

__all__ = ["quantile_of_buckets", "run_demo", "summarize"]
