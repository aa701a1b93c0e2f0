"""The usual response, read in one pass: an OpenAI-compatible chat completion as a plain
dict (what ``httpx``'s ``.json()``, LiteLLM's dicts and REST clients give), or a dict that
holds only its usage.

``_usage`` and ``_outcome`` read any shape, field by field, through the reader of each
field's type, and each is a few calls deep. For this one shape both are read here at
once, in straight-line code: about a quarter of what the two readers cost, which is most
of what a tracked call spends beyond the updates it makes. Anything unusual in the
response (a count that is not a plain int in range, a details block that is not a dict,
several choices, a tool call, a finish reason not seen before) gives None, and the
general readers then read that response. So what this gives is always what they would
give; ``tests/ai/test_chat_dict.py`` checks it over generated responses.
"""

from __future__ import annotations

from typing import Any

from ._outcome import REASON_LABELS, SINGLE_OUTCOMES, Outcome
from ._usage import MAX_TOKENS, Tokens

__all__ = ["read_chat_dict"]


#: The fields by which the general outcome reader tells other shapes (an Anthropic
#: Message, an OpenAI Response, Gemini's candidates, Cohere's reason, stream events and
#: what carries a response): a dict without choices has none of them, or is not plain.
_OTHER_SHAPES = ("type", "object", "candidates", "finish_reason", "data", "chunk")


def read_chat_dict(response: dict[Any, Any]) -> tuple[Tokens, Outcome | None] | None:
    """The token counts and the outcome of a plain chat completion dict (or of a dict
    with only its usage), or None when it is not one, or not a plain one (the general
    readers read it then)."""
    usage = response.get("usage")
    choices = response.get("choices")
    if type(usage) is not dict:
        return None
    if choices is None:  # usage alone, as a hand-made or trimmed response has it
        for name in _OTHER_SHAPES:
            if response.get(name) is not None:
                return None
    elif type(choices) is not list or len(choices) != 1:
        return None
    get = usage.get
    prompt = get("prompt_tokens")
    completion = get("completion_tokens")
    if not (
        type(prompt) is int
        and type(completion) is int
        and 0 <= prompt <= MAX_TOKENS
        and 0 <= completion <= MAX_TOKENS
    ):
        return None
    # prompt_tokens includes the cache; the details say how much (and LiteLLM repeats it
    # beside, Anthropic-named, read only when the details do not say).
    cached = written = reasoning = None
    details = get("prompt_tokens_details")
    if details is not None:
        if type(details) is not dict:
            return None
        cached = details.get("cached_tokens")
        written = details.get("cache_write_tokens")
        if written is None:
            written = details.get("cache_creation_tokens")
    if cached is None:
        cached = get("cache_read_input_tokens")
    if written is None:
        written = get("cache_creation_input_tokens")
    details = get("completion_tokens_details")
    if details is not None:
        if type(details) is not dict:
            return None
        reasoning = details.get("reasoning_tokens")
    # Each checked inline (a loop over them costs a third of the read).
    if cached is not None and not (type(cached) is int and 0 <= cached <= MAX_TOKENS):
        return None
    if written is not None and not (type(written) is int and 0 <= written <= MAX_TOKENS):
        return None
    if reasoning is not None and not (type(reasoning) is int and 0 <= reasoning <= MAX_TOKENS):
        return None
    tokens = (prompt, completion, cached or 0, written or 0, reasoning or 0)
    if choices is None:
        return tokens, None
    choice = choices[0]
    if type(choice) is not dict:
        return None
    message = choice.get("message")
    if type(message) is not dict or message.get("function_call") is not None:
        return None
    calls = message.get("tool_calls")
    if calls is not None and (type(calls) is not list or calls):
        return None
    value = choice.get("finish_reason")
    outcome = None
    if value is not None:
        # A reason seen before, and the shared outcome of it alone (``_outcome``'s memory).
        reason = REASON_LABELS.get(value) if type(value) is str else None
        outcome = None if reason is None else SINGLE_OUTCOMES.get(reason)
        if outcome is None:
            return None
    return tokens, outcome
