"""An LLM call's span, per the OpenTelemetry GenAI conventions: named ``"{operation}
{model}"``, kind CLIENT, with the ``gen_ai.*`` attributes of the request and, at its end,
of the response. Never a prompt or a completion: only names and counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._tracing import start_span

if TYPE_CHECKING:
    from ._outcome import Outcome
    from ._usage import Usage


def span_name(operation: str, model: str | None) -> str:
    return operation if model is None else f"{operation} {model}"


def start_call_span(operation: str, provider: str, model: str | None) -> Any:
    """The started span of one call (None without a tracer)."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
    }
    if model is not None:
        attributes["gen_ai.request.model"] = model
    return start_span(span_name(operation, model), True, attributes)


def end_attributes(
    response_model: str | None,
    usage: Usage | None,
    outcome: Outcome | None,
    first_chunk: float | None,
) -> dict[str, Any]:
    """What the call's end adds: the response's model, its token counts (input includes
    the cached input, as the conventions count it), finish reasons, and for a stream the
    seconds to its first chunk."""
    attributes: dict[str, Any] = {}
    if response_model is not None:
        attributes["gen_ai.response.model"] = response_model
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        if usage.cache_read:
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read
        if usage.cache_creation:
            attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_creation
    if outcome is not None and outcome.finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = list(outcome.finish_reasons)
    if first_chunk is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = first_chunk
    return attributes
