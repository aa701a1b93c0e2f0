"""The Instrumentation object, the default one behind the module-level API, and configure()."""

from __future__ import annotations

import logging
import math
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from prometheus_client import CollectorRegistry

from . import config as _config
from ._wrapping import Instrumenter, Probe, record_deferred_ends
from .delivery import (
    BeforeCollect,
    Delivery,
    PushTarget,
    check_grouping_key,
    check_job,
    check_seconds,
    register_before_snapshot,
)
from .delivery import multiprocess_enabled as _multiprocess_enabled
from .metrics import (
    DEFAULT_NAMESPACE,
    Metrics,
    check_buckets,
    check_label_value,
    check_namespace,
)

if TYPE_CHECKING:
    from .ai import AICallTracker
    from .analysis import AnalysisMonitor

__all__ = ["Instrumentation", "Policy", "configure", "get_instrumentation"]

logger = logging.getLogger("instrument")

# Job ends the engine could not record at the recursion limit are in every snapshot.
register_before_snapshot(record_deferred_ends)

P = TypeVar("P", bound=Probe)
B = TypeVar("B", bound="Binding")


def _check_label(what: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, got {value!r}")
    check_label_value(what, value)


def check_number(what: str, value: object) -> float:
    """``value`` as a float, or a TypeError/ValueError saying what was expected."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{what} must not be NaN")
    return number


class Instrumentation:
    """One registry of metrics plus how they are delivered.

    >>> inst = Instrumentation(pushgateway="http://127.0.0.1:9091")
    >>> @inst.monitored_analysis("static_analysis", "codebase")
    ... def analyze(path): ...

    Every argument is a keyword; nothing is read from the environment (see :func:`configure`).
    """

    def __init__(
        self,
        *args: Any,
        registry: CollectorRegistry | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        pushgateway: str | None = None,
        job: str = "codomyrmex",
        enabled: bool = True,
        buckets: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
        push_mode: str | None = None,
        push_interval: float = 1.0,
        push_method: str = "put",
        push_timeout: float = 5.0,
        grouping_key: Mapping[str, str] | None = None,
        instance: bool | str = False,
        delete_on_exit: bool = False,
        textfile: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        bearer_token: str | None = None,
        tls_verify: bool = True,
        ca_file: str | None = None,
        max_models: int = 50,
        prices: Mapping[str, Any] | str | None = None,
    ) -> None:
        if args:
            raise TypeError(
                "Instrumentation takes keyword arguments only, e.g. "
                "Instrumentation(pushgateway='http://127.0.0.1:9091', namespace='codomyrmex')"
            )
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise TypeError(f"registry must be a CollectorRegistry, got {type(registry).__name__}")
        if not isinstance(max_models, int) or max_models < 1:
            raise ValueError(f"max_models must be a positive integer, got {max_models!r}")
        # Everything that can be refused is checked before the registry is touched, so a
        # refused Instrumentation leaves a user's registry as it was.
        check_namespace(namespace)
        check_buckets(buckets)
        self.job = check_job(job)
        group = check_grouping_key(grouping_key or {}, instance=instance)
        push_interval = check_seconds("push_interval", push_interval)
        check_seconds("push_timeout", push_timeout)
        gateway = None
        if pushgateway is not None:
            gateway = PushTarget(
                pushgateway,
                job=job,
                grouping_key=group,
                method=push_method,
                basic_auth=basic_auth,
                bearer_token=bearer_token,
                tls_verify=tls_verify,
                ca_file=ca_file,
                timeout=push_timeout,
            )
        self._prices: dict[str, Any] | None = None
        if prices is not None:
            self.set_prices(prices)
        self.enabled = bool(enabled)
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.namespace = namespace
        self.max_models = max_models
        self._collect_registry: CollectorRegistry | None = None
        if not self.enabled:
            # Validated above, then dropped: disabled means no request ever leaves.
            push_mode, gateway, textfile = "off", None, None

        def deliver(metrics: Metrics) -> Delivery:
            return Delivery(
                metrics,
                gateway=gateway,
                textfile=textfile,
                mode=push_mode,
                interval=push_interval,
                instance=instance,
                delete_on_exit=delete_on_exit,
                collect=self.collect_registry,
            )

        self.metrics, self.delivery = _register(self.registry, namespace, buckets, deliver)
        self._warned_job_types: set[str] = set()
        self.retired = False
        self._bindings: weakref.WeakSet[Binding] = weakref.WeakSet()

    def retire(self) -> None:
        """Mark this instrumentation as no longer the default: decorators following the
        default rebind on their next call."""
        self._set_retired(True)

    def _set_retired(self, retired: bool) -> None:
        self.retired = retired
        for binding in list(self._bindings):
            binding.stale = retired or not binding.enabled

    def __repr__(self) -> str:
        state = "" if self.enabled else ", enabled=False"
        return f"Instrumentation(namespace={self.namespace!r}, {self.delivery!r}{state})"

    @property
    def push_mode(self) -> str:
        return self.delivery.mode

    def collect_registry(self) -> CollectorRegistry:
        """The registry to expose or push: across processes in multiprocess mode."""
        if not _multiprocess_enabled():
            return self.registry
        if self._collect_registry is None:
            from prometheus_client import multiprocess

            collected = CollectorRegistry()
            multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
            self._collect_registry = collected
        return self._collect_registry

    # -- decorators and with-blocks -------------------------------------------------------------

    def monitored_analysis(
        self,
        module: str,
        # None only so that a bare @monitored_analysis gets a clear error, not Python's.
        analysis_type: str = None,  # type: ignore[assignment]  # noqa: RUF013
        *,
        job_type: str | None = None,
        project: str | Callable[[dict[str, Any]], str] | None = None,
        quality: Callable[[Any], float] | None = None,
    ) -> AnalysisMonitor:
        """Decorate a function (sync, async, generator) or open a with-block as one analysis job."""
        from .analysis import AnalysisMonitor

        return AnalysisMonitor(
            self, module, analysis_type, job_type=job_type, project=project, quality=quality
        )

    def track_ai_call(
        self, provider: str, model: str | None = None, **options: Any
    ) -> AICallTracker:
        """Decorate an LLM client call (or open a with-block) to record calls, latency, tokens."""
        from .ai import AICallTracker

        return AICallTracker(self, provider, model, **options)

    # -- the original PrometheusIntegration's methods --------------------------------------------

    def record_quality_score(self, project: str, module: str, score: float) -> None:
        """Set the latest code quality score of ``project``/``module``."""
        _check_label("project", project)
        _check_label("module", module)
        value = check_number("score", score)
        if self.enabled:
            self.metrics.code_quality_score.labels(project=project, module=module).set(value)
            self.delivery.after_call()

    def record_analysis(
        self, module: str, analysis_type: str, duration: float, success: bool = True
    ) -> None:
        """Count one finished analysis and observe its duration (seconds)."""
        _check_label("module", module)
        _check_label("analysis_type", analysis_type)
        seconds = check_number("duration", duration)
        if not self.enabled:
            return
        status = "success" if success else "error"
        self.metrics.analyses.labels(module, analysis_type, status).inc()
        self.metrics.analysis_duration.labels(module, analysis_type).observe(seconds)
        self.delivery.after_call()

    def update_active_jobs(self, job_type: str, count: int) -> None:
        """Set the active-jobs gauge, as the original did. Prefer the decorators' inc/dec."""
        _check_label("job_type", job_type)
        value = check_number("count", count)
        if job_type not in self._warned_job_types:
            self._warned_job_types.add(job_type)
            warnings.warn(
                f"update_active_jobs({job_type!r}, ...) sets the gauge outright, which is wrong "
                "beside decorated jobs of the same job_type (they inc/dec it); use "
                "monitored_analysis as a decorator or with-block instead",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.enabled:
            self.metrics.active_jobs.labels(job_type).set(value)
            self.delivery.after_call()

    def record_ai_api_call(
        self,
        provider: str,
        model: str,
        success: bool = True,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Count one AI API call and its tokens, as the original did."""
        _check_label("provider", provider)
        _check_label("model", model)
        tokens = {"input": input_tokens, "output": output_tokens}
        for kind, count in tokens.items():
            if check_number(f"{kind}_tokens", count) < 0:
                raise ValueError(f"{kind}_tokens must not be negative, got {count}")
        if not self.enabled:
            return
        m = self.metrics
        m.ai_api_calls.labels(provider, model, "success" if success else "error").inc()
        for kind, count in tokens.items():
            if count > 0:
                m.ai_tokens.labels(provider, model, kind).inc(count)
        self.delivery.after_call()

    def set_prices(self, prices: Mapping[str, Any] | str) -> None:
        """Per-token prices in LiteLLM's model price map format (a mapping or a JSON file)."""
        from .ai import load_prices

        self._prices = load_prices(prices)

    # -- delivery -----------------------------------------------------------------------------

    def push(self, timeout: float | None = None) -> bool:
        """Push the full state now (blocking), whatever the push mode; True on success."""
        return self.delivery.push(timeout)

    async def push_metrics(self) -> bool:
        """Push the full state now over aiohttp; True on success, never raises."""
        return await self.delivery.push_async()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the latest state is delivered, or ``timeout`` seconds pass."""
        return self.delivery.flush(timeout)

    async def aflush(self) -> bool:
        """Deliver the latest state over aiohttp and wait for it."""
        return await self.delivery.aflush()

    def delete_from_gateway(self) -> bool:
        """Delete this instrumentation's group from the Pushgateway."""
        return self.delivery.delete()

    def close(self) -> None:
        """Stop the flusher, deliver the final state, close sessions."""
        self.delivery.close()

    async def aclose(self) -> None:
        await self.delivery.aclose()

    def install_sigterm_handler(self) -> None:
        """Opt in: on SIGTERM exit normally, so the final state is flushed at exit."""
        from .delivery import install_sigterm_handler

        install_sigterm_handler()

    # -- pull mode ----------------------------------------------------------------------------

    def start_http_server(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Serve /metrics on ``addr:port`` from a daemon thread; returns the server."""
        from .exposition import start_http_server

        return start_http_server(self, port, addr)

    def aiohttp_handler(self) -> Callable[[Any], Awaitable[Any]]:
        """An aiohttp request handler serving the metrics (``app.router.add_get``)."""
        from .exposition import aiohttp_handler

        return aiohttp_handler(self)

    def asgi_app(self) -> Any:
        """An ASGI app serving the metrics."""
        from prometheus_client import make_asgi_app

        return make_asgi_app(self.collect_registry())


def _register(
    registry: CollectorRegistry,
    namespace: str,
    buckets: Sequence[float] | Mapping[str, Sequence[float]] | None,
    deliver: Callable[[Metrics], Delivery],
) -> tuple[Metrics, Delivery]:
    """Register the before-snapshot hook and the metrics of ``namespace`` on ``registry``,
    then build the delivery with them: all or nothing.

    The hook goes first, so a scrape records deferred work (abandoned streams) before the
    metrics are read; once per registry, however many instrumentations share it. If the
    metrics clash or the delivery settings are refused, what this call registered is taken
    back, so the registry is as it was. Under the lock, so no other Instrumentation picks up
    metrics that are about to be taken back.
    """
    with _default_lock:
        hook = None
        if registry not in _hooked_registries:
            hook = BeforeCollect()
            registry.register(hook)
            _hooked_registries.add(registry)
        existed = Metrics.shared(registry, namespace) is not None
        metrics = None
        try:
            metrics = Metrics.get(registry, namespace, buckets)
            return metrics, deliver(metrics)
        except BaseException:
            if metrics is not None and not existed:
                metrics.unregister()
            if hook is not None:
                _hooked_registries.discard(registry)
                registry.unregister(hook)
            raise


# -- bindings: decorators resolve their Instrumentation once, not per call ---------------------


class Binding:
    """What a decorator needs from one Instrumentation, looked up once."""

    def __init__(self, inst: Instrumentation) -> None:
        self.inst = inst
        self.enabled = inst.enabled
        #: The hot path's one check: True when the slow path (:meth:`Policy.binding`) must
        #: decide, because recording is off or the instrumentation stopped being the default.
        # Registered first, so a retire() running meanwhile cannot miss this binding.
        inst._bindings.add(self)
        self.stale = not inst.enabled or inst.retired
        self.after_call = inst.delivery.after_call
        self.after_call_async = inst.delivery.after_call_async
        #: What a probe's ``deliver`` should be: None when nothing is ever pushed.
        self.deliver = inst.delivery.call_hook()


class Policy(Instrumenter[P], Generic[P, B]):
    """A decorator bound to one Instrumentation, or (``inst=None``) following the default.

    Following the default, it binds on first use and rebinds when :func:`configure`
    replaces the default: one identity check per call.
    """

    _binding: B | None = None

    def __init__(self, inst: Instrumentation | None) -> None:
        if inst is not None and not isinstance(inst, Instrumentation):
            raise TypeError(f"expected an Instrumentation, got {type(inst).__name__}")
        super().__init__()
        self._inst = inst

    def bind(self, inst: Instrumentation) -> B:
        raise NotImplementedError

    def prepare(self, func: Callable[..., Any]) -> None:
        # Bound to a given Instrumentation: bind the label children now, at decoration time.
        if self._inst is not None:
            self.binding()

    def binding(self) -> B:
        """The current binding. Hot paths call it only when ``b is None or b.stale``."""
        b = self._binding
        if b is None or (self._inst is None and b.inst is not get_instrumentation()):
            b = self._binding = self.bind(self._inst or get_instrumentation())
        return b


# -- the default instrumentation ---------------------------------------------------------------

_default: Instrumentation | None = None
_default_lock = threading.RLock()
_hooked_registries: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()


def get_instrumentation() -> Instrumentation:
    """The default instrumentation, created from the environment on first use.

    A variable with a bad value must not break, or flood the log of, every decorated call:
    the error is logged once, that variable is ignored (its default applies), and calls
    are recorded as usual. :func:`configure` raises instead.
    """
    global _default
    current = _default
    if current is not None:
        return current
    with _default_lock:
        if _default is None:
            _default = _default_from_environment()
        return _default


def _default_from_environment() -> Instrumentation:
    settings, problems = _config.read_environment()
    for problem in problems:
        logger.error("instrument: %s; ignoring it, its default applies", problem)
    try:
        return Instrumentation(**settings)
    except Exception as exc:
        # Values that are each fine, but not together (push_mode=each with no target).
        logger.error(
            "instrument: the environment gives no working configuration (%s); "
            "recording with the defaults instead",
            _with_environment(exc, settings),
        )
        return Instrumentation()


def configure(**kwargs: Any) -> Instrumentation:
    """Replace the default instrumentation; environment variables fill what is not given.

    Functions decorated with the module-level decorators before this call report to the
    new instrumentation from their next call on. A bad environment variable raises a
    ValueError naming it (a variable whose keyword is given is not read).
    """
    unset = [s.keyword for s in _config.SETTINGS if s.keyword not in kwargs]
    from_env = _config.from_environment(only=unset)
    try:
        new = Instrumentation(**{**from_env, **kwargs})
    except (TypeError, ValueError) as exc:
        if not from_env:
            raise
        error = ValueError if isinstance(exc, ValueError) else TypeError
        raise error(_with_environment(exc, from_env)) from None
    old = _replace_default(new)
    if old is not None:
        old.close()
    return new


def _with_environment(exc: BaseException, from_env: Mapping[str, Any]) -> str:
    """``exc``'s message, plus which variables supplied settings: the message names
    keywords, which a user who set only variables would not recognise."""
    names = [s.env for s in _config.SETTINGS if s.keyword in from_env and s.env]
    if "basic_auth" in from_env:
        names.append("INSTRUMENT_PUSHGATEWAY_USERNAME")
    if not names:
        return str(exc)
    return f"{exc} (set from the environment: {', '.join(names)})"


def _replace_default(new: Instrumentation | None) -> Instrumentation | None:
    """Make ``new`` the default (None: create it from the environment on next use) and
    return the previous one, retired: decorators following the default rebind."""
    global _default
    with _default_lock:
        old, _default = _default, new
    if old is not None and old is not new:
        old.retire()
    if new is not None:
        new._set_retired(False)
    return old
