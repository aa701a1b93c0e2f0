"""The tracker: what ``track_ai_call(...)`` returns, a decorator and a (async) with-block;
each call or block is one :class:`~instrument.ai._call.AICall` on the wrapping engine."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, NamedTuple, TypedDict, Unpack, cast

from .._wrapping import bind_arguments, wraps_signature
from ..instrumentation import Binding, Instrumentation, Policy
from ._call import AICall, no_abandoned_streams, record_abandoned_streams
from ._series import ModelSeries, ProviderModels, provider_models
from ._usage import ExtractorFailed, Usage, extract_usage, usage_from

logger = logging.getLogger("instrument")

_STREAM_VALUES = ("auto", True, False)


class AICallOptions(TypedDict, total=False):
    """The keyword options of :func:`track_ai_call`."""

    #: What kind of call this is: chat (default), embeddings, ... Informational only: no
    #: metric has an operation label. Exposed as ``call.operation`` on the with-block
    #: handle (and ``tracker.operation``), for logs and custom ``usage=`` extraction.
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


_OPTION_NAMES = frozenset(AICallOptions.__optional_keys__)


class AIBinding(Binding):
    """What a tracker records into on one Instrumentation, looked up once."""

    active_inc: Callable[[], None]
    active_dec: Callable[[], None]
    models: ProviderModels
    static: ModelSeries | None = None

    def __init__(self, inst: Instrumentation, tracker: AICallTracker) -> None:
        super().__init__(inst)
        if not self.enabled:
            return  # records nothing, so creates no series either
        active = inst.metrics.active_jobs.labels(tracker.job_type)
        self.active_inc = active.inc
        self.active_dec = active.dec
        self.models = provider_models(inst, tracker.provider)
        self.static = None if tracker.label is None else self.models.series(tracker.label)


# -- the decorator -----------------------------------------------------------------------------


class _ModelParameter(NamedTuple):
    """How to find the ``model`` argument of one decorated function."""

    signature: inspect.Signature | None  # set when ``model`` can be passed by position
    default: str | None


class AICallTracker(Policy[AICall, AIBinding]):
    """What ``track_ai_call(...)`` returns: a decorator and a (async) with-block."""

    observes_items = True

    def __init__(
        self,
        inst: Instrumentation | None,
        provider: str,
        model: str | None = None,
        **options: Unpack[AICallOptions],
    ) -> None:
        if callable(provider) and not isinstance(provider, str):
            raise TypeError(
                "track_ai_call needs arguments: use @track_ai_call('openai', 'gpt-4o') "
                "(or model=None to take the call's model argument), not @track_ai_call"
            )
        if not isinstance(provider, str) or not provider:
            raise TypeError(
                f"provider must be a non-empty string such as 'openai', got {provider!r}"
            )
        if model is not None and (not isinstance(model, str) or not model):
            raise TypeError(
                "model must be a model name such as 'gpt-4o', or None to take it from the "
                f"call's `model` argument or the response; got {model!r}"
            )
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"track_ai_call got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"the options are {', '.join(sorted(_OPTION_NAMES))}"
            )
        operation = options.get("operation", "chat")
        if not isinstance(operation, str) or not operation:
            raise TypeError(
                f"operation must be a non-empty string such as 'chat' or 'embeddings', "
                f"got {operation!r}"
            )
        usage = options.get("usage")
        if usage is not None and not callable(usage):
            raise TypeError(
                "usage must be a callable taking a response (or stream chunk) and returning "
                "a Usage, a mapping such as {'input_tokens': 10, 'output_tokens': 5}, or "
                f"None; got {type(usage).__name__}"
            )
        stream = options.get("stream", "auto")
        if not any(
            stream is v or (isinstance(stream, str) and stream == v) for v in _STREAM_VALUES
        ):
            raise ValueError(
                "stream must be 'auto' (wrap results that are iterators or async iterators), "
                f"True (wrap any iterable result) or False (never wrap); got {stream!r}"
            )
        job_type = options.get("job_type", "ai_call")
        if not isinstance(job_type, str) or not job_type:
            raise TypeError(f"job_type must be a non-empty string, got {job_type!r}")
        normalize = options.get("normalize_model")
        if normalize is not None and not callable(normalize):
            raise TypeError(
                "normalize_model must be a callable taking a model name and returning its "
                "label, e.g. lambda m: re.sub(r'-\\d{4}-\\d{2}-\\d{2}$', '', m) to drop a "
                f"date suffix; got {type(normalize).__name__}"
            )
        super().__init__(inst)
        self.provider = provider
        self.model = model
        self.operation = operation
        self.usage = usage
        #: Reads usage from a response or chunk: picked once, as it runs for every chunk.
        self._extract: Callable[[Any], Usage | None] = (
            extract_usage if usage is None else self._extract_with
        )
        self.stream = stream
        self.job_type = job_type
        self.normalize_model = normalize
        self._warned: set[str] = set()
        self.label: str | None = None
        if model is not None:
            self.label = model
            if normalize is not None:
                label = normalize(model)
                if not isinstance(label, str) or not label:
                    raise TypeError(
                        f"normalize_model({model!r}) returned {label!r}; it must return a "
                        "non-empty string"
                    )
                self.label = label
        self._null = AICall(None, self, None)

    def __repr__(self) -> str:
        return f"track_ai_call({self.provider!r}, {self.model!r})"

    def bind(self, inst: Instrumentation) -> AIBinding:
        return AIBinding(inst, self)

    def null_probe(self) -> AICall:
        return self._null

    def starter(self, func: Callable[..., Any]) -> Callable[..., AICall]:
        if self.model is not None:
            return self.start
        # model=None: the call's ``model`` argument, found by this function's signature (one
        # tracker may decorate several functions), else its default.
        parameter = _model_parameter(func)
        signature = parameter.signature if parameter is not None else None
        default = parameter.default if parameter is not None else None

        def start_with_model(
            wrapped: Callable[..., Any],
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> AICall:
            value = kwargs.get("model")
            if value is None:
                if signature is not None and args:
                    value = bind_arguments(signature, wrapped, args, kwargs).get("model")
                if value is None:
                    value = default
            model = value if isinstance(value, str) and value else None
            return self.start(wrapped, args, kwargs, model)

        return start_with_model

    def start(
        self,
        wrapped: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        model: str | None = None,
    ) -> AICall:
        if not no_abandoned_streams():
            record_abandoned_streams()
        b = self._binding
        if b is None or b.stale:
            b = self.binding()
            if not b.enabled:
                return self._null
        return AICall(b, self, model)

    def _extract_with(self, response: Any) -> Usage | None:
        """Usage read by the ``usage=`` extractor. Its failure is the call's to report, once
        per provider and model, like any response that cannot be read."""
        extractor = cast(Callable[[Any], Any], self.usage)  # installed only when it is set
        try:
            return usage_from(extractor(response))
        except Exception as exc:
            raise ExtractorFailed(
                f"the usage extractor of {self!r} raised {type(exc).__name__}"
            ) from None

    def _label(self, model: str) -> str:
        normalize = self.normalize_model
        if normalize is None:
            return model
        try:
            label = normalize(model)
        except Exception as exc:
            self._complain(
                "normalize",
                "normalize_model(%r) failed (%s: %s); the name is used as is",
                model,
                type(exc).__name__,
                exc,
            )
            return model
        if not isinstance(label, str) or not label:
            self._complain(
                "normalize",
                "normalize_model(%r) returned %r, not a non-empty string; the name is used as is",
                model,
                label,
            )
            return model
        return label

    def _complain(self, what: str, message: str, *args: Any) -> None:
        """A warning the first time a user callable of this tracker fails, then debug logs:
        one written for whole responses may fail on every chunk of a stream."""
        log = logger.debug if what in self._warned else logger.warning
        self._warned.add(what)
        log("instrument: " + message, *args)


def _model_parameter(func: Callable[..., Any]) -> _ModelParameter | None:
    # Through functools.wraps decorators (tenacity's @retry, caches): their ``*args``
    # pass the call on to the function that names ``model``.
    signature = wraps_signature(func)
    if signature is None:
        return None
    parameter = signature.parameters.get("model")
    if parameter is None:
        return None
    default = parameter.default if isinstance(parameter.default, str) else None
    positional = parameter.kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    return _ModelParameter(signature if positional else None, default)


def track_ai_call(
    provider: str, model: str | None = None, **options: Unpack[AICallOptions]
) -> AICallTracker:
    """Track each call (or with-block) as one LLM call, on the default instrumentation.

    >>> @track_ai_call("openai", "gpt-4o")
    ... def ask(prompt):
    ...     return client.chat.completions.create(model="gpt-4o", messages=[...])

    ``model=None`` takes the call's ``model`` argument, else the response's model, else
    "unknown". Options: ``operation``, ``usage``, ``stream``, ``job_type``, ``normalize_model``
    (see :class:`AICallOptions`).

    ``operation`` ("chat" by default, or "embeddings", ...) is informational: no metric has
    an operation label, so it never splits a series. It is exposed as ``call.operation`` on
    the with-block handle (and ``tracker.operation``), for logs and for code that reads
    usage itself (a ``usage=`` extractor, ``call.add_usage``).
    """
    return AICallTracker(None, provider, model, **options)
