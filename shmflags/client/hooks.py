"""Evaluation hooks with ldclient's interface, the runner that calls them around an evaluation,
and the plugin metadata through which ldclient-style plugins contribute hooks.

Safe in any worker; no threads, no sockets. A hook (or plugin) that raises is logged and
ignored, so a faulty one can never change a flag value or make ``variation()`` raise.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)


@dataclass
class EvaluationSeriesContext:
    """What a hook is told about the evaluation it observes (read-only by convention).

    :ivar key: the flag key being evaluated.
    :ivar context: the evaluation context as passed by the caller.
    :ivar default_value: the caller's default value.
    :ivar method: ``"variation"``, ``"variation_detail"``, ``"migration_variation"``, ...
    :ivar environment_id: the LaunchDarkly environment id (``X-LD-EnvID``), when the
        supervisor has learnt it from LaunchDarkly or a Relay Proxy; else ``None``.
    """

    key: str
    context: Any
    default_value: Any
    method: str
    environment_id: Optional[str] = None


@dataclass
class Metadata:
    """Describes a hook implementation.

    :ivar name: a name for the hook, used in log lines about it.
    """

    name: str


class Hook:
    """Base class for evaluation hooks, shaped like ``ldclient.hook.Hook``.

    Subclasses override :attr:`metadata` and either stage; the defaults pass the series data
    through unchanged, so new stages can be added without breaking existing hooks. Objects
    that are not subclasses but have the same attributes (an ``ldclient`` hook, say) are
    accepted by the client too.
    """

    @property
    def metadata(self) -> Metadata:
        """The hook's :class:`Metadata`."""
        return Metadata(name="UNDEFINED")

    def before_evaluation(self, series_context: EvaluationSeriesContext, data: dict) -> dict:
        """Called before the flag value is determined.

        :param series_context: the evaluation being performed.
        :param data: the series data (an empty dict for the first stage); do not modify it.
        :returns: the series data handed to :meth:`after_evaluation`.
        """
        return data

    def after_evaluation(self, series_context: EvaluationSeriesContext, data: dict,
                         detail: Any) -> dict:
        """Called after the flag value is determined.

        :param series_context: the evaluation being performed.
        :param data: what :meth:`before_evaluation` returned.
        :param detail: the :class:`~shmflags.evaluation.EvaluationDetail` of the result.
        :returns: the series data (unused after this stage).
        """
        return data


def is_hook(obj: Any) -> bool:
    """Whether ``obj`` can be used as a hook (ours, ldclient's, or any look-alike)."""
    if isinstance(obj, Hook):
        return True
    return (callable(getattr(obj, "before_evaluation", None))
            and callable(getattr(obj, "after_evaluation", None)))


def hook_name(hook: Any) -> str:
    """The hook's metadata name, or its class name if reading the metadata fails."""
    try:
        return str(hook.metadata.name)
    except Exception:  # a broken metadata property must not break evaluation
        return type(hook).__name__


class HookRunner:
    """Holds a client's hooks and runs the before/after stages around an evaluation.

    Hooks run in registration order before the evaluation and in reverse order after it, each
    ``after`` stage receiving the data its own ``before`` stage returned (ldclient's series
    semantics). The list is replaced, never mutated, so evaluations read it without a lock.
    """

    def __init__(self, hooks: Iterable[Any] = (),
                 environment_id: Callable[[], Optional[str]] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._environment_id = environment_id
        #: The registered hooks, in order (a tuple, replaced on each add; a plain attribute
        #: because the client reads it on every evaluation).
        self.hooks: Tuple[Any, ...] = ()
        for hook in hooks or ():
            self.add(hook)

    def add(self, hook: Any) -> bool:
        """Register a hook; objects without the hook interface are ignored with a warning.

        :returns: whether the hook was added.
        """
        if not is_hook(hook):
            log.warning("ignoring %r: not an evaluation hook (needs before_evaluation and "
                        "after_evaluation)", hook)
            return False
        with self._lock:
            self.hooks = self.hooks + (hook,)
        return True

    def after_fork(self) -> None:
        """Replace the lock in a forked child (the parent may have held it at fork time)."""
        self._lock = threading.Lock()

    def run(self, key: str, context: Any, default: Any, method: str,
            evaluate: Callable[[], Tuple[Any, Any]]) -> Any:
        """Run ``evaluate`` wrapped in the hook stages.

        :param evaluate: returns ``(detail, result)``; hooks see ``detail``.
        :returns: ``result`` from ``evaluate``.
        """
        hooks = self.hooks
        if not hooks:
            return evaluate()[1]
        series = EvaluationSeriesContext(key=key, context=context, default_value=default,
                                         method=method, environment_id=_env(self._environment_id))
        datas: List[Any] = [_stage(h, "before_evaluation", series, {}) for h in hooks]
        detail, result = evaluate()
        for hook, data in zip(reversed(hooks), reversed(datas)):
            _stage(hook, "after_evaluation", series, data, detail)
        return result


def _env(provider: Callable[[], Optional[str]]) -> Optional[str]:
    try:
        return provider()
    except Exception:  # noqa: BLE001 - a hook series never fails for want of the id
        return None


def _stage(hook: Any, stage: str, series: EvaluationSeriesContext, data: Any,
           *detail: Any) -> Any:
    try:
        return getattr(hook, stage)(series, data, *detail)
    except BaseException as exc:  # noqa: B036 - ldclient also swallows everything from hooks
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        log.error("evaluation hook %s raised in %s: %r", hook_name(hook), stage, exc)
        return {}


@dataclass
class SdkMetadata:
    """The SDK a plugin runs in (ldclient's ``SdkMetadata``)."""

    name: str
    version: str
    wrapper_name: Optional[str] = None
    wrapper_version: Optional[str] = None


@dataclass
class ApplicationMetadata:
    """The application, from the ``application`` setting."""

    id: Optional[str] = None
    version: Optional[str] = None


@dataclass
class EnvironmentMetadata:
    """What plugins are told about the environment (ldclient's ``EnvironmentMetadata``)."""

    sdk: SdkMetadata
    sdk_key: Optional[str] = None
    application: Optional[ApplicationMetadata] = None


def environment_metadata(config: Any) -> EnvironmentMetadata:
    """The :class:`EnvironmentMetadata` of a client with ``config``."""
    from shmflags import __version__
    app = config.application
    return EnvironmentMetadata(
        sdk=SdkMetadata("shmflags", __version__, config.wrapper_name, config.wrapper_version),
        sdk_key=config.sdk_key or None,
        application=ApplicationMetadata(app.get("id"), app.get("version")) if app else None)


def plugin_hooks(plugins: Iterable[Any], metadata: EnvironmentMetadata) -> List[Any]:
    """The hooks every plugin contributes (``plugin.get_hooks(metadata)``); a plugin that
    raises is logged and skipped."""
    out: List[Any] = []
    for plugin in plugins or ():
        get_hooks = getattr(plugin, "get_hooks", None)
        if get_hooks is None:
            continue
        try:
            out.extend(get_hooks(metadata) or ())
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the client
            log.error("plugin %s: get_hooks raised %r", _plugin_name(plugin), exc)
    return out


def register_plugins(plugins: Iterable[Any], client: Any, metadata: EnvironmentMetadata) -> None:
    """Call ``plugin.register(client, metadata)`` for each plugin, logging failures."""
    for plugin in plugins or ():
        register = getattr(plugin, "register", None)
        if register is None:
            continue
        try:
            register(client, metadata)
        except Exception as exc:  # noqa: BLE001
            log.error("plugin %s: register raised %r", _plugin_name(plugin), exc)


def _plugin_name(plugin: Any) -> str:
    try:
        return str(plugin.metadata.name)
    except Exception:  # noqa: BLE001
        return type(plugin).__name__


__all__: Sequence[str] = ("ApplicationMetadata", "EnvironmentMetadata", "EvaluationSeriesContext",
                          "Hook", "HookRunner", "Metadata", "SdkMetadata", "environment_metadata",
                          "hook_name", "is_hook", "plugin_hooks", "register_plugins")
