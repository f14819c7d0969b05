"""The flag-file source: loads LaunchDarkly flag files and reloads them when they change.

Runs in the supervisor only. A daemon thread checks every file's mtime, inode, size and device
every :data:`POLL_INTERVAL` seconds (so edits in place and atomic renames are both seen within
well under a second, with no extra dependency) and reloads all files when any changed. A load
that fails (unreadable file, syntax error, duplicate key) reports ``INTERRUPTED`` with an
``INVALID_DATA`` error and leaves the previous data in place, as ldclient's file source does.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional, Tuple

from shmflags import filedata
from shmflags.config import Config
from shmflags.errors import DataError
from shmflags.supervisor.sources import SourceSink

log = logging.getLogger(__name__)

#: Seconds between checks of the files' metadata.
POLL_INTERVAL = 0.2


class FileSource:
    """Serves the files named by ``config.data_file``.

    :param config: the supervisor's configuration (``data_file`` must be non-empty).
    :param sink: where loaded data goes.
    """

    name = "file"

    def __init__(self, config: Config, sink: SourceSink) -> None:
        self.paths = list(config.data_file)
        self._sink = sink
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._signature: Optional[Tuple[Any, ...]] = None
        self.loads = 0

    def start(self) -> None:
        """Start the watcher thread; its first action is a load."""
        self._thread = threading.Thread(target=self._run, name="shmflags-file-source",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watcher (returns within one poll interval)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def reload(self) -> None:
        """Reload every file now, changed or not (SIGHUP)."""
        self._reload.set()

    def load(self) -> bool:
        """Load all files once and hand the result to the sink; returns whether it succeeded."""
        self._signature = filedata.file_signature(self.paths)
        try:
            flags, segments = filedata.load_files(self.paths)
        except DataError as exc:
            return self._failed("INVALID_DATA", str(exc))
        except Exception as exc:  # noqa: BLE001 - the watcher thread must survive any file
            return self._failed("UNKNOWN", f"{type(exc).__name__}: {exc}")
        self._sink.init(flags, segments)
        self._sink.set_status("VALID")
        self.loads += 1
        log.info("loaded %d flags and %d segments from %s", len(flags), len(segments),
                 ", ".join(self.paths))
        return True

    def _failed(self, kind: str, message: str) -> bool:
        log.error("cannot load flag data: %s", message)
        self._sink.set_status("INTERRUPTED", {"kind": kind, "statusCode": 0, "message": message,
                                              "time": int(time.time() * 1000)})
        return False

    def _run(self) -> None:
        self.load()
        while not self._stop.wait(POLL_INTERVAL):
            if self._reload.is_set():
                self._reload.clear()
                self.load()
            elif filedata.file_signature(self.paths) != self._signature:
                self.load()
