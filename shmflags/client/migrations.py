"""Technology migrations with ldclient's API: stages, migrator builder, and the op tracker.

Safe in any worker. A :class:`Migrator` reads the stage from a migration flag through
``Client.migration_variation``, runs the caller's old/new functions as the stage says, and
hands a ``migration_op`` event to ``Client.track_migration_op``. Parallel reads start a
short-lived thread pool per call (nothing survives between calls, so forks are unaffected).
"""
from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
from datetime import timedelta
from enum import Enum
from typing import Any, Callable, Dict, Optional, Set, Tuple, Union

log = logging.getLogger(__name__)


class Result:
    """The outcome of a migration origin call: a success with a value, or an error.

    Same shape as ``ldclient.Result``; objects of that class are accepted too.
    """

    def __init__(self, value: Optional[Any], error: Optional[str],
                 exception: Optional[BaseException]) -> None:
        self.__value = value
        self.__error = error
        self.__exception = exception

    @staticmethod
    def success(value: Any) -> "Result":
        """A successful result holding ``value``."""
        return Result(value, None, None)

    @staticmethod
    def fail(error: str, exception: Optional[BaseException] = None) -> "Result":
        """A failed result with a description and, optionally, the exception behind it."""
        return Result(None, error, exception)

    def is_success(self) -> bool:
        """True when there is no error."""
        return self.__error is None

    @property
    def value(self) -> Optional[Any]:
        """The value of a successful result."""
        return self.__value

    @property
    def error(self) -> Optional[str]:
        """The error description of a failed result."""
        return self.__error

    @property
    def exception(self) -> Optional[BaseException]:
        """The exception of a failed result, if one was raised."""
        return self.__exception


MigratorFn = Callable[[Optional[Any]], Any]
MigratorCompareFn = Callable[[Any, Any], bool]


class _FromStr:
    @classmethod
    def from_str(cls, text: Any) -> Any:
        """The member whose value is ``text``, or ``None``."""
        for member in cls:  # type: ignore[attr-defined]
            if member.value == text:
                return member
        return None


class ExecutionOrder(_FromStr, Enum):
    """How the two reads of a shadow or live stage are ordered."""

    SERIAL = "serial"
    RANDOM = "random"
    PARALLEL = "parallel"


class Operation(_FromStr, Enum):
    """The kind of migration operation recorded in the event."""

    READ = "read"
    WRITE = "write"


class Origin(_FromStr, Enum):
    """Which side of the migration an operation touched."""

    OLD = "old"
    NEW = "new"


class Stage(_FromStr, Enum):
    """The six migration stages, in order: off, dualwrite, shadow, live, rampdown, complete."""

    OFF = "off"
    DUALWRITE = "dualwrite"
    SHADOW = "shadow"
    LIVE = "live"
    RAMPDOWN = "rampdown"
    COMPLETE = "complete"


class OperationResult(Result):
    """A :class:`Result` tagged with the origin it came from."""

    def __init__(self, origin: Origin, result: Any) -> None:
        super().__init__(getattr(result, "value", None), getattr(result, "error", None),
                         getattr(result, "exception", None))
        self.__origin = origin

    @property
    def origin(self) -> Origin:
        """The origin that produced this result."""
        return self.__origin


class WriteResult:
    """The authoritative write's result and, when it ran, the non-authoritative one's."""

    def __init__(self, authoritative: OperationResult,
                 nonauthoritative: Optional[OperationResult] = None) -> None:
        self.__authoritative = authoritative
        self.__nonauthoritative = nonauthoritative

    @property
    def authoritative(self) -> OperationResult:
        """Result of the write to the authoritative origin (always attempted first)."""
        return self.__authoritative

    @property
    def nonauthoritative(self) -> Optional[OperationResult]:
        """Result of the second write, or ``None`` if it was skipped."""
        return self.__nonauthoritative


class MigrationConfig:
    """The old and new functions of one operation kind, plus an optional comparison."""

    def __init__(self, old: MigratorFn, new: MigratorFn,
                 comparison: Optional[MigratorCompareFn] = None) -> None:
        self.__old = old
        self.__new = new
        self.__comparison = comparison

    @property
    def old(self) -> MigratorFn:
        """Function operating on the old origin; takes the optional payload."""
        return self.__old

    @property
    def new(self) -> MigratorFn:
        """Function operating on the new origin; takes the optional payload."""
        return self.__new

    @property
    def comparison(self) -> Optional[MigratorCompareFn]:
        """Function telling whether two successful read values are consistent."""
        return self.__comparison


def _sample(ratio: Any, rng: random.Random) -> bool:
    if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio <= 0:
        return False
    return ratio == 1 or rng.random() < 1.0 / ratio


class OpTracker:
    """Collects what happened during one migration operation and builds its event.

    Obtained from ``Client.migration_variation``; thread-safe (parallel reads record into it
    from two threads).

    :param key: the migration flag key.
    :param flag: the flag's LaunchDarkly JSON, or ``None`` when it does not exist.
    :param context: the evaluation context.
    :param detail: the evaluation detail of the stage.
    :param default_stage: the caller's default stage.
    """

    def __init__(self, key: str, flag: Optional[Dict[str, Any]], context: Any, detail: Any,
                 default_stage: Stage) -> None:
        self.__key = key
        self.__flag = flag
        self.__context = context
        self.__detail = detail
        self.__default_stage = default_stage
        self.__lock = threading.Lock()
        self.__operation: Optional[Operation] = None
        self.__invoked: Set[Origin] = set()
        self.__consistent: Optional[bool] = None
        self.__errors: Set[Origin] = set()
        self.__latencies: Dict[Origin, timedelta] = {}
        self.__check_ratio = 1
        migration = (flag or {}).get("migration")
        if isinstance(migration, dict) and isinstance(migration.get("checkRatio"), int):
            self.__check_ratio = migration["checkRatio"]
        self.__rng = random.Random()

    def operation(self, op: Operation) -> "OpTracker":
        """Record whether this was a read or a write."""
        if isinstance(op, Operation):
            with self.__lock:
                self.__operation = op
        return self

    def invoked(self, origin: Origin) -> "OpTracker":
        """Record that ``origin`` was called."""
        if isinstance(origin, Origin):
            with self.__lock:
                self.__invoked.add(origin)
        return self

    def consistent(self, is_consistent: Callable[[], bool]) -> "OpTracker":
        """Run the consistency check if the flag's ``checkRatio`` sampling selects it."""
        with self.__lock:
            try:
                if _sample(self.__check_ratio, self.__rng):
                    self.__consistent = bool(is_consistent())
            except Exception as exc:
                log.error("migration consistency check raised %r; not recorded", exc)
        return self

    def error(self, origin: Origin) -> "OpTracker":
        """Record that the call to ``origin`` failed."""
        if isinstance(origin, Origin):
            with self.__lock:
                self.__errors.add(origin)
        return self

    def latency(self, origin: Origin, duration: timedelta) -> "OpTracker":
        """Record how long the call to ``origin`` took."""
        if isinstance(origin, Origin):
            with self.__lock:
                self.__latencies[origin] = duration
        return self

    def build(self) -> Union[Dict[str, Any], str]:
        """The ``migration_op`` event (LaunchDarkly's output schema, ld-protocol §6.2).

        The ``context`` member is the context's LD JSON; the supervisor redacts it.

        :returns: the event dict, or a string saying why no event can be built.
        """
        with self.__lock:
            if self.__operation is None:
                return "operation not provided"
            if not self.__key:
                return "migration operation cannot contain an empty key"
            if not self.__invoked:
                return "no origins were invoked"
            if not getattr(self.__context, "valid", False):
                return "provided context was invalid"
            problem = self.__check_measurements()
            if problem:
                return problem
            detail = self.__detail
            evaluation: Dict[str, Any] = {"key": self.__key, "value": detail.value}
            flag = self.__flag
            if flag is not None and "version" in flag:
                evaluation["version"] = flag["version"]
            evaluation["default"] = self.__default_stage.value
            if detail.variation_index is not None:
                evaluation["variation"] = detail.variation_index
            if detail.reason is not None:
                evaluation["reason"] = detail.reason
            event: Dict[str, Any] = {
                "kind": "migration_op",
                "creationDate": int(time.time() * 1000),
                "operation": self.__operation.value,
                "context": self.__context.to_dict(),
                "evaluation": evaluation,
            }
            sampling = None if flag is None else flag.get("samplingRatio")
            if sampling is not None and sampling != 1:
                event["samplingRatio"] = sampling
            measurements = [{"key": "invoked",
                             "values": {o.value: True for o in _ordered(self.__invoked)}}]
            if self.__consistent is not None:
                m: Dict[str, Any] = {"key": "consistent", "value": self.__consistent}
                if self.__check_ratio != 1:
                    m["samplingRatio"] = self.__check_ratio
                measurements.append(m)
            if self.__latencies:
                measurements.append({"key": "latency_ms", "values": {
                    o.value: self.__latencies[o] / timedelta(milliseconds=1)
                    for o in _ordered(self.__latencies)}})
            if self.__errors:
                measurements.append({"key": "error",
                                     "values": {o.value: True for o in _ordered(self.__errors)}})
            event["measurements"] = measurements
            return event

    def __check_measurements(self) -> Optional[str]:
        for origin in Origin:
            if origin in self.__invoked:
                continue
            if origin in self.__latencies:
                return f"provided latency for origin '{origin.value}' without recording invocation"
            if origin in self.__errors:
                return f"provided error for origin '{origin.value}' without recording invocation"
        if self.__consistent is not None and len(self.__invoked) != 2:
            return "provided consistency without recording both invocations"
        return None


def _ordered(origins: Any) -> list:
    return [o for o in Origin if o in origins]


class Migrator:
    """Runs migration-backed reads and writes; build one with :class:`MigratorBuilder`."""

    def read(self, key: str, context: Any, default_stage: Stage,
             payload: Optional[Any] = None) -> OperationResult:  # pragma: no cover - abstract
        """Read through the origin(s) the flag's stage selects."""
        raise NotImplementedError

    def write(self, key: str, context: Any, default_stage: Stage,
              payload: Optional[Any] = None) -> WriteResult:  # pragma: no cover - abstract
        """Write through the origin(s) the flag's stage selects."""
        raise NotImplementedError


class _Executor:
    def __init__(self, origin: Origin, fn: MigratorFn, tracker: OpTracker, latency: bool,
                 errors: bool, payload: Any) -> None:
        self.origin = origin
        self._fn = fn
        self._tracker = tracker
        self._latency = latency
        self._errors = errors
        self._payload = payload

    def run(self) -> OperationResult:
        start = time.monotonic()
        try:
            result = self._fn(self._payload)
            if not callable(getattr(result, "is_success", None)):
                result = Result.fail(f"'{self.origin.value}' operation did not return a Result")
        except Exception as exc:
            result = Result.fail(f"'{self.origin.value}' operation raised an exception", exc)
        if self._latency:
            self._tracker.latency(self.origin, timedelta(seconds=time.monotonic() - start))
        if self._errors and not result.is_success():
            self._tracker.error(self.origin)
        self._tracker.invoked(self.origin)
        return OperationResult(self.origin, result)


class _MigratorImpl(Migrator):
    def __init__(self, client: Any, order: ExecutionOrder, read: MigrationConfig,
                 write: MigrationConfig, latency: bool, errors: bool) -> None:
        self._client = client
        self._order = order
        self._read = read
        self._write = write
        self._latency = latency
        self._errors = errors
        self._rng = random.Random()

    def _executors(self, config: MigrationConfig, tracker: OpTracker,
                   payload: Any) -> Tuple[_Executor, _Executor]:
        return (_Executor(Origin.OLD, config.old, tracker, self._latency, self._errors, payload),
                _Executor(Origin.NEW, config.new, tracker, self._latency, self._errors, payload))

    def read(self, key: str, context: Any, default_stage: Stage,
             payload: Optional[Any] = None) -> OperationResult:
        stage, tracker = self._client.migration_variation(key, context, default_stage)
        tracker.operation(Operation.READ)
        old, new = self._executors(self._read, tracker, payload)
        if stage in (Stage.OFF, Stage.DUALWRITE):
            result = old.run()
        elif stage == Stage.SHADOW:
            result = self._read_both(old, new, tracker)
        elif stage == Stage.LIVE:
            result = self._read_both(new, old, tracker)
        else:  # RAMPDOWN, COMPLETE
            result = new.run()
        self._client.track_migration_op(tracker)
        return result

    def write(self, key: str, context: Any, default_stage: Stage,
              payload: Optional[Any] = None) -> WriteResult:
        stage, tracker = self._client.migration_variation(key, context, default_stage)
        tracker.operation(Operation.WRITE)
        old, new = self._executors(self._write, tracker, payload)
        if stage == Stage.OFF:
            outcome = WriteResult(old.run())
        elif stage in (Stage.DUALWRITE, Stage.SHADOW):
            outcome = WriteResult(*self._write_both(old, new))
        elif stage in (Stage.LIVE, Stage.RAMPDOWN):
            outcome = WriteResult(*self._write_both(new, old))
        else:  # COMPLETE
            outcome = WriteResult(new.run())
        self._client.track_migration_op(tracker)
        return outcome

    def _read_both(self, authoritative: _Executor, other: _Executor,
                   tracker: OpTracker) -> OperationResult:
        if self._order == ExecutionOrder.PARALLEL:
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
                first = pool.submit(authoritative.run)
                second = pool.submit(other.run)
                auth_result, other_result = first.result(), second.result()
        elif self._order == ExecutionOrder.RANDOM and _sample(2, self._rng):
            other_result = other.run()
            auth_result = authoritative.run()
        else:
            auth_result = authoritative.run()
            other_result = other.run()
        compare = self._read.comparison
        if compare is not None and auth_result.is_success() and other_result.is_success():
            tracker.consistent(lambda: compare(auth_result.value, other_result.value))
        return auth_result

    @staticmethod
    def _write_both(authoritative: _Executor,
                    other: _Executor) -> Tuple[OperationResult, Optional[OperationResult]]:
        auth_result = authoritative.run()
        if not auth_result.is_success():
            return auth_result, None
        return auth_result, other.run()


class MigratorBuilder:
    """Configures a :class:`Migrator`: read and write functions, ordering, what to measure.

    :param client: the shmflags (or any ldclient-compatible) client.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self.__order = ExecutionOrder.PARALLEL
        self.__latency = True
        self.__errors = True
        self.__read: Optional[MigrationConfig] = None
        self.__write: Optional[MigrationConfig] = None

    def read_execution_order(self, order: ExecutionOrder) -> "MigratorBuilder":
        """Serial, random or parallel execution of the two reads (default parallel)."""
        if isinstance(order, ExecutionOrder):
            self.__order = order
        return self

    def track_latency(self, enabled: bool) -> "MigratorBuilder":
        """Whether to measure latency (default true)."""
        self.__latency = enabled
        return self

    def track_errors(self, enabled: bool) -> "MigratorBuilder":
        """Whether to record errors (default true)."""
        self.__errors = enabled
        return self

    def read(self, old: MigratorFn, new: MigratorFn,
             comparison: Optional[MigratorCompareFn] = None) -> "MigratorBuilder":
        """The read functions (each takes the optional payload and returns a Result)."""
        self.__read = MigrationConfig(old, new, comparison)
        return self

    def write(self, old: MigratorFn, new: MigratorFn) -> "MigratorBuilder":
        """The write functions (each takes the optional payload and returns a Result)."""
        self.__write = MigrationConfig(old, new)
        return self

    def build(self) -> Union[Migrator, str]:
        """The migrator, or a string saying what configuration is missing."""
        if self.__read is None:
            return "read configuration not provided"
        if self.__write is None:
            return "write configuration not provided"
        return _MigratorImpl(self._client, self.__order, self.__read, self.__write,
                             self.__latency, self.__errors)


__all__ = ["ExecutionOrder", "MigrationConfig", "Migrator", "MigratorBuilder",
           "MigratorCompareFn", "MigratorFn", "OpTracker", "Operation", "OperationResult",
           "Origin", "Result", "Stage", "WriteResult"]
