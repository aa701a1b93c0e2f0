"""What ``track_ai_call(...)`` is asked for, checked once at decoration time into a frozen
object: no call checks it again, and nothing changes it after."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ..metrics import check_label_value
from ..objectives import Objective, ObjectiveArg, objectives_of


class AICallOptions(TypedDict, total=False):
    """The keyword options of :func:`track_ai_call`."""

    #: What kind of call this is: "chat" (default); the OpenTelemetry GenAI names are
    #: chat, embeddings, text_completion, generate_content, execute_tool, invoke_agent and
    #: retrieval (others are allowed). The ``operation`` label of ai_operations_total;
    #: also ``call.operation`` on the with-block handle (and ``tracker.operation``).
    operation: str
    #: Reads usage from responses (and stream chunks) of other shapes: returns a
    #: :class:`~instrument.usage.Usage`, a mapping with its field names, or None.
    usage: Callable[[Any], Any] | None
    #: "auto" wraps results that are iterators or async iterators, and stream managers
    #: (with-blocks that hand out the stream); True also wraps any iterable result; False
    #: never wraps.
    stream: str | bool
    #: The ``active_jobs`` label (default "ai_call").
    job_type: str
    #: Maps a model name to its label, e.g. to fold dated versions together.
    normalize_model: Callable[[str], str] | None
    #: An :class:`~instrument.Objective` (or a list) these calls count towards.
    objective: ObjectiveArg
    #: The attribution labels' values per call, each a callable taking the call's
    #: arguments by name: ``{"tenant": lambda args: args["tenant_id"]}``. The labels are
    #: the Instrumentation's ``attribution=``.
    attribution: Mapping[str, Callable[[Mapping[str, Any]], Any]] | None


OPTION_NAMES = frozenset(AICallOptions.__optional_keys__)
_STREAM_VALUES = ("auto", True, False)


def _non_empty(value: object) -> bool:
    return isinstance(value, str) and bool(value)


@dataclass(frozen=True, slots=True)
class TrackerOptions:
    """The checked arguments of one ``track_ai_call(provider, model, **options)``."""

    provider: str
    model: str | None = None
    operation: str = "chat"
    usage: Callable[[Any], Any] | None = None
    stream: str | bool = "auto"
    job_type: str = "ai_call"
    normalize_model: Callable[[str], str] | None = None
    objective: ObjectiveArg = None
    attribution: Mapping[str, Callable[[Mapping[str, Any]], Any]] | None = None
    #: The fixed model's label (``normalize_model`` applied once); None for model=None.
    label: str | None = field(init=False, default=None)

    @classmethod
    def of(cls, provider: str, model: str | None, options: Mapping[str, Any]) -> TrackerOptions:
        """Check ``track_ai_call``'s arguments; a TypeError or ValueError says what to pass."""
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"track_ai_call got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"the options are {', '.join(sorted(OPTION_NAMES))}"
            )
        return cls(provider, model, **options)

    def __post_init__(self) -> None:
        provider, model = self.provider, self.model
        if callable(provider) and not isinstance(provider, str):
            raise TypeError(
                "track_ai_call needs arguments: use @track_ai_call('openai', 'gpt-4o') "
                "(or model=None to take the call's model argument), not @track_ai_call"
            )
        if not _non_empty(provider):
            raise TypeError(
                f"provider must be a non-empty string such as 'openai', got {provider!r}"
            )
        # Label values: one the exposition cannot encode would fail every scrape and push.
        check_label_value("provider", provider)
        if model is not None:
            if not _non_empty(model):
                raise TypeError(
                    "model must be a model name such as 'gpt-4o', or None to take it from "
                    f"the call's `model` argument or the response; got {model!r}"
                )
            check_label_value("model", model)
        if not _non_empty(self.operation):
            raise TypeError(
                f"operation must be a non-empty string such as 'chat' or 'embeddings', "
                f"got {self.operation!r}"
            )
        check_label_value("operation", self.operation)
        if self.usage is not None and not callable(self.usage):
            raise TypeError(
                "usage must be a callable taking a response (or stream chunk) and returning "
                "a Usage, a mapping such as {'input_tokens': 10, 'output_tokens': 5}, or "
                f"None; got {type(self.usage).__name__}"
            )
        stream = self.stream
        if not any(
            stream is v or (isinstance(stream, str) and stream == v) for v in _STREAM_VALUES
        ):
            raise ValueError(
                "stream must be 'auto' (wrap results that are iterators or async iterators), "
                f"True (wrap any iterable result) or False (never wrap); got {stream!r}"
            )
        if not _non_empty(self.job_type):
            raise TypeError(f"job_type must be a non-empty string, got {self.job_type!r}")
        check_label_value("job_type", self.job_type)
        normalize = self.normalize_model
        if normalize is not None and not callable(normalize):
            raise TypeError(
                "normalize_model must be a callable taking a model name and returning its "
                "label, e.g. lambda m: re.sub(r'-\\d{4}-\\d{2}-\\d{2}$', '', m) to drop a "
                f"date suffix; got {type(normalize).__name__}"
            )
        label = model
        if model is not None and normalize is not None:
            label = normalize(model)
            if not _non_empty(label):
                raise TypeError(
                    f"normalize_model({model!r}) returned {label!r}; it must return a "
                    "non-empty string"
                )
            check_label_value(f"the label normalize_model({model!r}) returned", label)
        attribution = self.attribution
        if attribution is not None:
            example = "attribution={'tenant': lambda args: args['tenant_id']}"
            if not isinstance(attribution, Mapping) or not all(
                isinstance(k, str) and k and callable(v) for k, v in attribution.items()
            ):
                raise TypeError(
                    "attribution must map label names to callables taking the call's "
                    f"arguments by name, e.g. {example}"
                )
            object.__setattr__(self, "attribution", dict(attribution) or None)
        object.__setattr__(self, "label", label)  # derived once, like the checks
        object.__setattr__(self, "objective", objectives_of(self.objective))

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return self.objective  # type: ignore[return-value]  # a tuple since __post_init__
