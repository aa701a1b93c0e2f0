"""``track_ai_call``: calls, latency, tokens, time to first token, errors and cost of LLM calls.

One call is one job on the wrapping engine: a decorated function (sync, async, generator,
async generator) or a with-block. When the call returns a stream, the caller gets it back
in a transparent proxy and the job ends when the stream does: exhausted (success), failed
(error), closed or left early (cancelled), or garbage collected unfinished (cancelled). A
stream that iterates both ways is watched both ways; a stream manager (an SDK's
``messages.stream(...)``) is watched from the caller's ``with`` to the end of the stream it
hands out; a raw HTTP response (``with_raw_response``) is read through its ``parse()``.

Whatever reading a response does, the call ends and is counted. A call that ran without
readable usage counts in ``ai_usage_missing_total``, with one warning per provider and
model.

A stream garbage collected unfinished is recorded at the next AI call or push, or when
:func:`record_abandoned_streams` is called (pull mode: before a scrape). The collector may
run while its thread holds a lock that recording takes, so it only queues the stream.

Label children are bound once per (provider, model); at most ``max_models`` model names
per provider get their own series, the rest are reported as ``other``.

Modules: ``_tracker`` (the decorator and with-block, a policy on the engine) with its
checked ``_options``; ``_call`` (one call and the recording side of its streams) and
``_proxies`` (what the caller holds instead of a stream); ``_series`` (label children and
the model guard); ``_semconv`` (the OpenTelemetry GenAI metrics, opt-in); ``_prices``;
``_usage``, ``_fields`` and ``_content`` (reading responses
and chunks by their shape).
"""

from __future__ import annotations

from ._call import AICall, record_abandoned_streams
from ._options import AICallOptions
from ._prices import ModelPrice, load_prices
from ._semconv import GenAIMetrics as GenAIMetrics
from ._semconv import GenAISemconv as GenAISemconv
from ._series import OTHER_MODEL as OTHER_MODEL
from ._series import UNKNOWN_MODEL as UNKNOWN_MODEL
from ._tracker import AICallTracker, track_ai_call
from ._tracker import record_counted_call as record_counted_call
from ._usage import Usage as Usage

# OTHER_MODEL, UNKNOWN_MODEL and Usage are importable from here too, outside __all__ as
# they always were; record_counted_call is the facade's record_ai_api_call; GenAIMetrics
# and GenAISemconv are the facade's genai_semconv=True.

__all__ = [
    "AICall",
    "AICallOptions",
    "AICallTracker",
    "ModelPrice",
    "load_prices",
    "record_abandoned_streams",
    "track_ai_call",
]
