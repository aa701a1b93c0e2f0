"""Token usage read from LLM responses by their shape, with no SDK imported.

Kept importable here (``from instrument.usage import Usage``); the readers live in
:mod:`instrument.ai`, beside the tracker that uses them.
"""

from __future__ import annotations

from .ai._content import carries_content, response_body, stream_finished, stream_snapshot
from .ai._usage import MAX_TOKENS, USAGE_FIELDS, Usage, extract_usage, response_model, usage_from

__all__ = [
    "MAX_TOKENS",
    "USAGE_FIELDS",
    "Usage",
    "carries_content",
    "extract_usage",
    "response_body",
    "response_model",
    "stream_finished",
    "stream_snapshot",
    "usage_from",
]
