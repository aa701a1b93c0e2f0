"""The tracker: what ``track_ai_call(...)`` returns, a decorator and a (async) with-block;
each call or block is one :class:`~instrument.ai._call.AICall` on the wrapping engine."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from types import MethodType
from typing import TYPE_CHECKING, Any, NamedTuple, Unpack, cast

from .._cells import CellSeries
from .._engine import CANCELLING, bind_arguments, deferred_work, run_deferred, wraps_signature
from ..objectives import Coverage, declare
from ..policy import Binding, Policy
from ._attribution import AttributedSeries, AttributionGuard, attribution_guard
from ._call import AICall
from ._options import AICallOptions, TrackerOptions
from ._series import ModelSeries, ProviderModels, provider_models
from ._usage import ExtractorFailed, Tokens, read_tokens, tokens_from

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation
    from ._semconv import GenAISemconv

logger = logging.getLogger("instrument")


class AIBinding(Binding):
    """What a tracker records into on one Instrumentation, looked up once."""

    #: The active-jobs gauge's step: +1 as a call starts, -1 as it ends.
    active_step: Callable[[int], None]
    models: ProviderModels
    static: ModelSeries | None = None
    #: ``static`` and the fixed model's name (its price's) when no attribution label
    #: splits it: what a call's end takes without a lookup, unless it set its own model.
    plain: tuple[ModelSeries, str] | None = None
    attribution: AttributionGuard | None = None
    #: The fixed model's series by attribution values, when both are set.
    fixed_attributed: AttributedSeries | None = None
    #: The gen_ai_* recorder (``genai_semconv=True``), else None.
    genai: GenAISemconv | None = None

    def __init__(self, inst: Instrumentation, tracker: AICallTracker) -> None:
        super().__init__(inst)
        if not self.enabled:
            return  # records nothing, so creates no series either
        options = tracker.options
        active = inst.metrics.active_jobs.labels(options.job_type)
        if self.cells:  # see policy.Binding.cells
            cells = CellSeries(self, counters={}, gauges={0: active}, histograms={}, gauge=0)
            self.active_step = cells.begin
        else:
            self.active_step = active.inc
        self.models = provider_models(inst, options.provider)
        self.static = None if options.label is None else self.models.series(options.label)
        self.attribution = attribution_guard(inst)
        if self.static is not None and options.model is not None and self.attribution is None:
            self.plain = (self.static, options.model)
        self.genai = inst.genai
        if options.attribution:
            declared = () if self.attribution is None else self.attribution.labels
            unknown = sorted(set(options.attribution) - set(declared))
            if unknown:
                tracker.undeclared(unknown, declared)
        if options.label is not None and options.model is not None and self.attribution:
            self.fixed_attributed = AttributedSeries(
                self.attribution, self.models, options.label, options.model
            )


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
        #: The checked arguments; the attributes below read them.
        self.options = TrackerOptions.of(provider, model, options)
        super().__init__(inst)
        #: Reads usage from a response or chunk: picked once, as it runs for every chunk.
        self._extract: Callable[[Any], Tokens | None] = (
            read_tokens if self.options.usage is None else self._extract_with
        )
        self._warned: set[str] = set()
        #: The attribution callables by label, as pairs: read by every call that has them.
        self._value_of = tuple((self.options.attribution or {}).items())
        self._block_attribution = _Attribution(None, self._value_of, self._complain)
        #: Result types that are neither streams nor raw responses (found by ``AICall``):
        #: a type's protocols do not change, so each is inspected once.
        self.plain_types: set[type] = set()
        self._null = AICall(None, self, None)
        # model=None covers every model of the provider: the label is the call's.
        covered: tuple[tuple[str, str], ...] = (("provider", provider),)
        if self.options.label is not None:
            covered += (("model", self.options.label),)
        declare(inst, self.options.objectives, Coverage("ai", covered))

    def __repr__(self) -> str:
        return f"track_ai_call({self.provider!r}, {self.model!r})"

    # The options, read-only: what was checked at decoration stays what every call uses.

    @property
    def provider(self) -> str:
        return self.options.provider

    @property
    def model(self) -> str | None:
        return self.options.model

    @property
    def operation(self) -> str:
        return self.options.operation

    @property
    def usage(self) -> Callable[[Any], Any] | None:
        return self.options.usage

    @property
    def stream(self) -> str | bool:
        return self.options.stream

    @property
    def job_type(self) -> str:
        return self.options.job_type

    @property
    def normalize_model(self) -> Callable[[str], str] | None:
        return self.options.normalize_model

    @property
    def label(self) -> str | None:
        """The fixed model's label: ``model`` after ``normalize_model``."""
        return self.options.label

    def bind(self, inst: Instrumentation) -> AIBinding:
        return AIBinding(inst, self)

    def null_probe(self) -> AICall:
        return self._null

    def starter(self, func: Callable[..., Any]) -> Callable[..., AICall]:
        start = self._model_starter(func)
        if not self.options.attribution:
            return start
        values_of = _Attribution(wraps_signature(func), self._value_of, self._complain).values

        def start_attributed(
            wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> AICall:
            # Before the call begins, on the binding it will record into (rebound first
            # when the default Instrumentation changed): a signal a callable raises then
            # leaves nothing in flight.
            b = self._binding
            if b is None or b.stale:
                b = self.binding()
            values = None if b.attribution is None else values_of(wrapped, args, kwargs)
            call = start(wrapped, args, kwargs)
            if call._b is not None:
                # Read only where the binding has attribution; None (every label "") when
                # another thread's configure() rebound it onto one with attribution meanwhile.
                call._attrs = values
            return call

        return start_attributed

    def undeclared(self, labels: Iterable[str], declared: tuple[str, ...]) -> None:
        """Attribution labels the Instrumentation does not declare: warned about once
        each (a typo would otherwise be dropped silently)."""
        for label in labels:
            self._complain(
                f"undeclared {label}",
                "%r: the attribution label %r is not among the Instrumentation's "
                "attribution=%r; it is not recorded",
                self,
                label,
                declared,
            )

    def _model_starter(self, func: Callable[..., Any]) -> Callable[..., AICall]:
        if self.options.model is not None:
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
        if deferred_work:  # streams abandoned since the last call
            run_deferred()
        b = self._binding
        if b is None or b.stale:
            b = self.binding()
            if not b.enabled:
                return self._null
        values = None
        if wrapped is None and self.options.attribution and b.attribution is not None:
            # A with-block: no arguments, so the callables get none (one returning a
            # constant applies; call.attribute() sets a block's own values).
            values = self._block_attribution.values(None, (), {})
        call = AICall(b, self, model)
        call._attrs = values
        return call

    def _extract_with(self, response: Any) -> Tokens | None:
        """Usage read by the ``usage=`` extractor. Its failure is the call's to report, once
        per provider and model, like any response that cannot be read."""
        extractor = cast(Callable[[Any], Any], self.options.usage)  # installed only when set
        try:
            return tokens_from(extractor(response))
        except Exception as exc:
            raise ExtractorFailed(
                f"the usage extractor of {self!r} raised {type(exc).__name__}"
            ) from None

    def _label(self, model: str) -> str:
        normalize = self.options.normalize_model
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


#: The packages whose BaseExceptions cancel a task or greenlet (trio.Cancelled,
#: greenlet's GreenletExit, which gevent's kill raises).
_CANCELLING_PACKAGES = frozenset({"trio", "anyio", "greenlet", "gevent", "curio"})


def is_signal(exc: BaseException) -> bool:
    """Whether ``exc`` interrupts or cancels what runs rather than reports a failure."""
    if isinstance(exc, CANCELLING):
        return True
    return any(
        cls.__module__.partition(".")[0] in _CANCELLING_PACKAGES for cls in type(exc).__mro__
    )


class _Attribution:
    """The attribution values of one decorated function's calls: its ``attribution=``
    callables, each given the call's arguments by name, defaults filled in (by position
    and keyword directly when the signature allows it, the usual case; else through
    ``Signature.bind``, which costs several times more). A with-block's callables get no
    arguments (``signature`` None).

    A callable that raises gives no value: the call goes on, its label is "". What one
    raises that is no Exception is a signal, not a bug of the callable: Ctrl-C,
    SystemExit, a task's cancellation (asyncio's, trio's, gevent's GreenletExit) arrive
    wherever the thread happens to be, and had they arrived a moment later they would
    have stopped the function itself. They propagate, as they would have from the
    function, which then does not run; swallowing one would lose a cancellation. Any
    other BaseException of a callable is treated as an Exception."""

    def __init__(
        self,
        signature: inspect.Signature | None,
        value_of: tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...],
        complain: Callable[..., None],
    ) -> None:
        self.signature = signature
        self.value_of = value_of
        self.complain = complain
        params = [] if signature is None else list(signature.parameters.values())
        self.positional = tuple(
            p.name
            for p in params
            if p.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        self.most = len(self.positional)
        self.defaults = {p.name: p.default for p in params if p.default is not p.empty}
        # *args or keyword-only parameters: what lands where needs the real binding.
        self.simple = signature is not None and all(
            p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            for p in params
        )
        #: The usual case in one step: one callable, and a function whose first
        #: parameter takes the one argument given by position (no defaults to fill in).
        self.single: tuple[str, str, Callable[[Mapping[str, Any]], Any]] | None = (
            (self.positional[0], *value_of[0])
            if self.simple and self.positional and not self.defaults and len(value_of) == 1
            else None
        )

    def values(
        self, wrapped: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The attribution values of one call (one step: this runs before every call)."""
        single = self.single
        if single is not None and len(args) == 1 and not kwargs and type(wrapped) is not MethodType:
            name, label, value_of = single
            try:
                return {label: value_of({name: args[0]})}
            except BaseException as exc:
                self._failed(label, exc)
                return {}
        bound: dict[str, Any]
        if self.simple and len(args) <= self.most and type(wrapped) is not MethodType:
            if len(args) == 1:  # the usual LLM call's wrapper, ask(prompt): no zip
                bound = {self.positional[0]: args[0]}
            else:
                # zip stops at the shorter: the parameters given by position (no try:
                # none of this raises, and a zip without strict= costs a third less).
                bound = dict(zip(self.positional, args))  # noqa: B905
            if self.defaults:
                bound = {**self.defaults, **bound}
            if kwargs:
                bound.update(kwargs)
        elif self.signature is None or wrapped is None:
            # A with-block's callables get no arguments (it passes none); a callable whose
            # signature cannot be read (a builtin such as dict) its keyword ones.
            bound = dict(kwargs)
        else:
            try:
                bound = {**self.defaults, **bind_arguments(self.signature, wrapped, args, kwargs)}
            except Exception:  # the call then fails as it would undecorated
                bound = dict(kwargs)
        values: dict[str, Any] = {}
        for label, value_of in self.value_of:
            try:
                values[label] = value_of(bound)
            except BaseException as exc:
                self._failed(label, exc)
        return values

    def _failed(self, label: str, exc: BaseException) -> None:
        """The callable for ``label`` raised ``exc``: a signal propagates, anything else
        is reported once and gives no value."""
        if not isinstance(exc, Exception) and is_signal(exc):
            raise exc
        self.complain(
            f"attribution {label}",
            'the attribution callable for %r raised %s; the label is ""',
            label,
            type(exc).__name__,
        )


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


def record_counted_call(
    inst: Instrumentation,
    provider: str,
    model: str,
    success: bool,
    input_tokens: float,
    output_tokens: float,
) -> None:
    """One call whose counts the caller gives (the original ``record_ai_api_call``),
    recorded through the same model guard as tracked calls: the model's series, or
    ``other`` beyond ``max_models``, so no caller can grow the label set without bound."""
    series = provider_models(inst, provider).series(model)
    series.calls["success" if success else "error"]()
    if input_tokens:
        series.inc_input(input_tokens)
    if output_tokens:
        series.inc_output(output_tokens)


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

    ``operation`` ("chat" by default, or "embeddings", "execute_tool", ...) is the
    ``operation`` label of ai_operations_total (the seed's ai_api_calls_total keeps its
    labels). It is also ``call.operation`` on the with-block handle (and
    ``tracker.operation``).
    """
    return AICallTracker(None, provider, model, **options)
