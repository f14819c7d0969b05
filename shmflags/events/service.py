"""The supervisor's event service: receive worker datagrams, flush payloads, send diagnostics.

Runs in the supervisor; the main loop owns its lifetime (``start`` once, ``stop`` at exit).
Two daemon threads: the receive thread (socket → :class:`EventProcessor`) and the flush
thread (every ``flush_interval`` a ``/bulk`` post, every ``context_keys_flush_interval`` a
reset of the de-duplication keys, ``diagnostic-init`` at start and a ``diagnostic`` event
every ``diagnostic_recording_interval``). With ``send_events`` off the socket is still bound,
so workers do not pile up retries, but nothing is posted.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, MutableMapping, Optional

from shmflags.events.delivery import EventDelivery
from shmflags.events.diagnostics import Diagnostics
from shmflags.events.processor import EventProcessor
from shmflags.events.receiver import DatagramReceiver

__all__ = ["EventService"]

log = logging.getLogger(__name__)

COUNTER_NAMES = ("received", "sent", "dropped", "invalid", "deduplicated")


class EventService:
    """Everything the supervisor does with analytics events.

    :param config: the supervisor's :class:`~shmflags.config.Config`
    :param counters: optional mapping updated in place with :meth:`counters` after every
        flush (for a metrics registry that reads a dict)
    """

    def __init__(self, config: Any, counters: Optional[MutableMapping[str, int]] = None) -> None:
        self._config = config
        self._shared = counters
        self._send = bool(config.send_events) and not bool(getattr(config, "offline", False))
        self.processor = EventProcessor(config)
        self.diagnostics = None if config.diagnostic_opt_out else Diagnostics(config)
        self.delivery = EventDelivery(config, on_server_time=self.processor.set_server_time)
        self.receiver = DatagramReceiver(config.socket_path, config.socket_mode,
                                         self.processor.add)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._threads: list = []
        self._sent = 0
        self._failed = 0
        self._started = False

    # -- lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket and start the receive and flush threads.

        :raises EventsError: the socket cannot be bound
        """
        self.receiver.bind()
        self._started = True
        receive = threading.Thread(target=self.receiver.serve, args=(self._stop,),
                                   name="shmflags-events-receive", daemon=True)
        flusher = threading.Thread(target=self._run, name="shmflags-events-flush", daemon=True)
        self._threads = [receive, flusher]
        for t in self._threads:
            t.start()

    def stop(self, flush: bool = True) -> None:
        """Stop both threads, read what is still queued, flush it (when ``flush``), unbind.

        :param flush: post the pending events before returning
        """
        if not self._started:
            return
        self._started = False
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=5.0)
        self.receiver.drain()
        if flush:
            self.flush()
        self.receiver.close()
        self.delivery.close()
        self._publish()

    # -- work ------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Read the queued datagrams and post the current window now.

        :returns: ``True`` when there was nothing to send or the events service accepted it
        """
        self.receiver.drain()
        with self._flush_lock:
            payload, n_events = self.processor.take()
            if self.diagnostics is not None:
                self.diagnostics.record_events_in_batch(n_events)
            if not payload:
                ok = True
            elif not self._send or self.delivery.disabled:
                self._failed += len(payload)
                ok = False
            else:
                ok = self.delivery.post_bulk(payload)
                if ok:
                    self._sent += len(payload)
                else:
                    self._failed += len(payload)
        self._publish()
        return ok

    def record_stream_init(self, timestamp: int, duration_ms: int, failed: bool) -> None:
        """For the streaming source: report one connection attempt in diagnostics."""
        if self.diagnostics is not None:
            self.diagnostics.record_stream_init(timestamp, duration_ms, failed)

    def _send_diagnostic(self, event: Dict[str, Any]) -> None:
        if self._send and not self.delivery.disabled:
            self.delivery.post_diagnostic(event)

    def _run(self) -> None:
        """Body of the flush thread."""
        cfg = self._config
        now = time.monotonic()
        next_flush = now + float(cfg.flush_interval)
        next_keys = now + float(cfg.context_keys_flush_interval)
        next_diag = now + float(cfg.diagnostic_recording_interval)
        if self.diagnostics is not None:
            self._guard(lambda: self._send_diagnostic(self.diagnostics.init_event()))
        while not self._stop.is_set():
            self._wake.wait(max(0.0, min(next_flush, next_keys, next_diag) - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            if now >= next_keys:
                next_keys = now + float(cfg.context_keys_flush_interval)
                self.processor.clear_context_keys()
            if now >= next_flush:
                next_flush = now + float(cfg.flush_interval)
                self._guard(self.flush)
            if now >= next_diag and self.diagnostics is not None:
                next_diag = now + float(cfg.diagnostic_recording_interval)
                diagnostics = self.diagnostics
                self._guard(lambda: self._send_diagnostic(
                    diagnostics.periodic_event(*self.processor.take_diagnostic_counts())))

    @staticmethod
    def _guard(work: Any) -> None:
        try:
            work()
        except Exception:  # noqa: BLE001 - the flush thread must outlive one bad payload
            log.exception("event flush failed")

    # -- status ----------------------------------------------------------------------------

    def counters(self) -> Dict[str, int]:
        """``{"received", "sent", "dropped", "invalid", "deduplicated"}`` since start.

        ``received`` counts valid datagrams, ``sent`` events accepted by the events service,
        ``dropped`` events lost (supervisor queue full, reported by workers, or not
        delivered), ``invalid`` rejected datagrams and items with an invalid context.
        """
        p = self.processor
        return {
            "received": self.receiver.received,
            "sent": self._sent,
            "dropped": p.dropped + self._failed,
            "invalid": self.receiver.invalid + p.rejected,
            "deduplicated": p.deduplicated,
        }

    def _publish(self) -> None:
        if self._shared is not None:
            self._shared.update(self.counters())
