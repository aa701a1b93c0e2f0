"""The facade: one :class:`Instrumentation` is a registry of metrics, the decorators
recording into it, and how its state is delivered.

The process-wide default and ``configure()`` live in ``defaults.py``, what every decorator
shares in ``policy.py``; both are re-exported here, where they used to be.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from ._cells import fold_all, fold_if_changed
from ._engine import run_deferred
from ._registration import register_collectors
from ._validation import check_flag, check_label, check_number
from .analysis import AnalysisMonitor
from .defaults import (
    configure,
    get_instrumentation,
    is_default,
    register_instrumentation_class,
    set_retired,
)
from .delivery import (
    BeforeCollect,
    Delivery,
    PushTarget,
    check_grouping_key,
    check_job,
    check_seconds,
    check_textfile,
    follow_multiprocess_env,
    multiprocess_enabled,
    register_before_snapshot,
)
from .metrics import (
    DEFAULT_NAMESPACE,
    Metrics,
    before_read,
    check_attribution,
    check_buckets,
    check_build_info,
    check_namespace,
)
from .policy import Binding as Binding
from .policy import Policy

if TYPE_CHECKING:
    # The AI tracker and the objectives are imported where they are first used: a program
    # that only records analyses never loads them.
    from .ai import AICallTracker, ModelPrice
    from .objectives import Coverage, Objective, ObjectiveArg

__all__ = ["Instrumentation", "Policy", "configure", "get_instrumentation"]

logger = logging.getLogger("instrument")

# Work the engine deferred (abandoned streams, job ends at the recursion limit) is done
# before every snapshot: a push, a scrape, a read of the registry.
register_before_snapshot(run_deferred)
# Then what calls recorded in their threads' cells reaches the children (after the deferred
# work, which may record into cells too).
register_before_snapshot(fold_all)
# And as each metric is read, for reads that do not go through the registry's whole collect.
before_read(run_deferred)
before_read(fold_if_changed)


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
        push_registry: CollectorRegistry | None = None,
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
        textfile: str | os.PathLike[str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        bearer_token: str | None = None,
        tls_verify: bool = True,
        ca_file: str | None = None,
        max_models: int = 50,
        prices: Mapping[str, Any] | str | None = None,
        remote_write: str | None = None,
        remote_write_headers: Mapping[str, str] | None = None,
        external_labels: Mapping[str, str] | None = None,
        stale_on_exit: bool = True,
        build_info: Mapping[str, str] | None = None,
        attribution: Sequence[str] = (),
        max_attribution_values: int = 100,
        tracing: bool = True,
        genai_semconv: bool = False,
    ) -> None:
        if args:
            raise TypeError(
                "Instrumentation takes keyword arguments only, e.g. "
                "Instrumentation(pushgateway='http://127.0.0.1:9091', namespace='codomyrmex')"
            )
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise TypeError(f"registry must be a CollectorRegistry, got {type(registry).__name__}")
        if push_registry is not None and not isinstance(push_registry, CollectorRegistry):
            raise TypeError(
                "push_registry must be a CollectorRegistry (e.g. prometheus_client.REGISTRY), "
                f"got {type(push_registry).__name__}"
            )
        if not isinstance(max_models, int) or max_models < 1:
            raise ValueError(f"max_models must be a positive integer, got {max_models!r}")
        if not isinstance(max_attribution_values, int) or max_attribution_values < 1:
            raise ValueError(
                f"max_attribution_values must be a positive integer, got {max_attribution_values!r}"
            )
        #: The labels the money metrics gain (track_ai_call's attribution=), each with at
        #: most ``max_attribution_values`` values; the rest are "other".
        self.attribution = attribution = check_attribution(attribution)
        self.max_attribution_values = max_attribution_values
        # Everything that can be refused is checked before the registry is touched, so a
        # refused Instrumentation leaves a user's registry as it was.
        enabled = check_flag("enabled", enabled)
        self.tracing = check_flag("tracing", tracing)
        delete_on_exit = check_flag("delete_on_exit", delete_on_exit)
        tls_verify = check_flag("tls_verify", tls_verify)
        stale_on_exit = check_flag("stale_on_exit", stale_on_exit)
        self.genai_semconv = check_flag("genai_semconv", genai_semconv)
        check_namespace(namespace)
        check_buckets(buckets)
        build = check_build_info(build_info)
        self.job = check_job(job)
        group = check_grouping_key(grouping_key or {}, instance=instance, attribution=attribution)
        push_interval = check_seconds("push_interval", push_interval)
        check_seconds("push_timeout", push_timeout)
        if pushgateway is None and (basic_auth is not None or bearer_token is not None):
            # No other target sends credentials: dropping them would hide a forgotten URL.
            given = "basic_auth" if basic_auth is not None else "bearer_token"
            raise ValueError(
                f"{given} is set but pushgateway is not, and only the Pushgateway sends "
                "credentials; set pushgateway= (or INSTRUMENT_PUSHGATEWAY_URL), or drop them "
                "(remote write takes user:pass@ in its URL, or remote_write_headers)"
            )
        if remote_write is None and (remote_write_headers or external_labels):
            given = "remote_write_headers" if remote_write_headers else "external_labels"
            raise ValueError(
                f"{given} is set but remote_write is not, and only remote write uses it; set "
                "remote_write= (or INSTRUMENT_REMOTE_WRITE_URL), or drop it"
            )
        textfile_path = check_textfile(textfile)
        remote = None
        if remote_write is not None:
            # Imported only here: without remote write, its encoders are never loaded.
            from .delivery._remote_write import remote_write_target
            from .delivery._remote_write_checks import check_external_labels

            check_external_labels(external_labels or {}, group, attribution)  # vs attribution
            remote = remote_write_target(
                remote_write,
                headers=remote_write_headers,
                job=self.job,
                grouping_key=group,
                external_labels=external_labels,
                registry=push_registry if push_registry is not None else registry,
                tls_verify=tls_verify,
                ca_file=ca_file,
                timeout=push_timeout,
                stale_on_exit=stale_on_exit,
            )
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
        self._prices: dict[str, ModelPrice] | None = None
        if prices is not None:
            self.set_prices(prices)
        self.enabled = enabled
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.namespace = namespace
        self.max_models = max_models
        self._collect_registry: CollectorRegistry | None = None
        self.push_registry = push_registry
        # Before the metrics exist: they follow the variable as it is now, not as it was
        # when prometheus_client was imported.
        follow_multiprocess_env()
        if not self.enabled:
            # Validated above, then dropped: disabled means no request ever leaves.
            push_mode, gateway, textfile_path, remote = "off", None, None, None

        def make_delivery(metrics: Metrics) -> Delivery:
            return Delivery(
                metrics,
                gateway=gateway,
                textfile=textfile_path,
                mode=push_mode,
                interval=push_interval,
                instance=instance,
                delete_on_exit=delete_on_exit,
                collect=self._registry_to_deliver,
                remote_write=remote,
            )

        semconv = genai_semconv and self.enabled  # disabled: no family registered
        self.metrics, genai, self.delivery = register_collectors(
            self.registry, namespace, buckets, make_delivery, self.attribution, semconv
        )
        #: What AI calls record the gen_ai_* metrics with; None when genai_semconv is off.
        self.genai = None
        if genai is not None:
            from .ai import GenAISemconv

            self.genai = GenAISemconv(genai, max_models)
        if build is not None and self.enabled:
            self.metrics.build_info.labels(**build).set(1)
        self._warned_job_types: set[str] = set()
        #: No longer the default: decorators following the default rebind.
        self.retired = False

    def retire(self) -> None:
        """Mark this instrumentation as no longer the default: decorators following the
        default rebind on their next call."""
        set_retired(self, True)

    def __repr__(self) -> str:
        state = "" if self.enabled else ", enabled=False"
        return f"Instrumentation(namespace={self.namespace!r}, {self.delivery!r}{state})"

    @property
    def objectives(self) -> list[Objective]:
        """The objectives its decorators declared (``objective=``), in declaration order;
        the default instrumentation's include those of the decorators following it."""
        return [item for item, _ in self.objective_coverage()]

    def objective_coverage(self) -> list[tuple[Objective, tuple[Coverage, ...]]]:
        """Each of :attr:`objectives` with the decorators' series it covers."""
        from .objectives import declared

        return declared(self, following_default=is_default(self))

    @property
    def push_mode(self) -> str:
        return self.delivery.mode

    def collect_registry(self) -> CollectorRegistry:
        """The registry to expose or push: across processes in multiprocess mode."""
        if not multiprocess_enabled():
            return self.registry
        if self._collect_registry is None:
            from prometheus_client import multiprocess

            collected = CollectorRegistry()
            # First, as on the registry itself: a scrape across processes records deferred
            # work (abandoned streams) before the metrics are read.
            collected.register(BeforeCollect())
            multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
            self._collect_registry = collected
        return self._collect_registry

    def _registry_to_deliver(self) -> CollectorRegistry:
        return self.push_registry if self.push_registry is not None else self.collect_registry()

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
        objective: ObjectiveArg = None,
    ) -> AnalysisMonitor:
        """Decorate a function (sync, async, generator) or open a with-block as one analysis job."""
        return AnalysisMonitor(
            self,
            module,
            analysis_type,
            job_type=job_type,
            project=project,
            quality=quality,
            objective=objective,
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
        check_label("project", project)
        check_label("module", module)
        value = check_number("score", score)
        if self.enabled:
            self.metrics.code_quality_score.labels(project=project, module=module).set(value)
            self.delivery.after_call()

    def record_analysis(
        self, module: str, analysis_type: str, duration: float, success: bool = True
    ) -> None:
        """Count one finished analysis and observe its duration (seconds)."""
        check_label("module", module)
        check_label("analysis_type", analysis_type)
        seconds = check_number("duration", duration)
        if not self.enabled:
            return
        status = "success" if success else "error"
        self.metrics.analyses.labels(module, analysis_type, status).inc()
        self.metrics.analysis_duration.labels(module, analysis_type).observe(seconds)
        self.delivery.after_call()

    def update_active_jobs(self, job_type: str, count: int) -> None:
        """Set the active-jobs gauge, as the original did. Prefer the decorators' inc/dec."""
        check_label("job_type", job_type)
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
        """Count one AI API call and its tokens, as the original did; models beyond
        ``max_models`` report as ``other``, as tracked calls do."""
        check_label("provider", provider)
        check_label("model", model)
        tokens = {"input": input_tokens, "output": output_tokens}
        for kind, count in tokens.items():
            if check_number(f"{kind}_tokens", count) < 0:
                raise ValueError(f"{kind}_tokens must not be negative, got {count}")
        if not self.enabled:
            return
        from .ai import record_counted_call

        record_counted_call(self, provider, model, success, input_tokens, output_tokens)
        self.delivery.after_call()

    def set_prices(self, prices: Mapping[str, Any] | str) -> None:
        """Per-token prices in LiteLLM's model price map format (a mapping or a JSON file)."""
        from .ai import load_prices

        self._prices = load_prices(prices)

    @property
    def prices(self) -> Mapping[str, ModelPrice] | None:
        """The price table AI calls are costed by (None: no cost recorded); see set_prices."""
        return self._prices

    # -- delivery -----------------------------------------------------------------------------

    def push(self, timeout: float | None = None) -> bool:
        """Push the full state now (blocking), whatever the push mode; True on success."""
        return self.delivery.push(timeout)

    async def apush(self, timeout: float | None = None) -> bool:
        """:meth:`push` in async code, over aiohttp; True on success, never raises."""
        return await self.delivery.push_async(timeout=timeout)

    async def push_metrics(self) -> bool:
        """The seed's name for :meth:`apush`."""
        return await self.apush()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the latest state is delivered, or ``timeout`` seconds pass."""
        return self.delivery.flush(timeout)

    async def aflush(self) -> bool:
        """Deliver the latest state over aiohttp and wait for it."""
        return await self.delivery.aflush()

    def delete_from_gateway(self) -> bool:
        """Delete this instrumentation's group from the Pushgateway."""
        return self.delivery.delete()

    def prune_gateway(
        self, older_than: float = 3600, *, job: str | None = None, dry_run: bool = False
    ) -> list[dict[str, str]]:
        """Delete the Pushgateway's groups last pushed more than ``older_than`` seconds ago
        (only ``job``'s, if given; every job's by default): the labels of each group deleted
        (or, with ``dry_run``, that would be). A failed listing raises PushFailed; a group
        that cannot be deleted is logged and left for the next prune.

        >>> inst.prune_gateway(older_than=3600)  # doctest: +SKIP
        [{'job': 'nightly', 'instance': 'host-4711'}]
        """
        from .delivery import prune_groups

        if self.delivery.gateway is None:
            raise ValueError("prune_gateway needs pushgateway= (or INSTRUMENT_PUSHGATEWAY_URL)")
        found = prune_groups(self.delivery.gateway, older_than, job=job, dry_run=dry_run)
        for group, reason in found.failed:
            logger.warning("instrument: deleting the group %s failed (%s)", group.labels, reason)
        return [group.labels for group in found.deleted]

    def close(self) -> None:
        """Stop the flusher, deliver the final state, close sessions."""
        self.delivery.close()

    async def aclose(self) -> None:
        """:meth:`close` in async code."""
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


# Defaults are instances of this class; defaults.py cannot import it (this module imports
# the policies, which import defaults).
register_instrumentation_class(Instrumentation)
