"""The ``shmflags`` command: status, eval, dump, watch, cleanup and supervisor.

Runs in a short-lived CLI process (``supervisor`` runs the supervisor in this process). It reads
the namespace the way a worker does — control block and snapshot, read-only — and never sends
events. The namespace comes from ``--name`` or ``SHMFLAGS_NAME``, like every setting.

Exit status: 0 success; 1 nothing is served (``status``) or the flag/namespace is missing;
2 usage or configuration error.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from shmflags.config import Config
from shmflags.errors import ConfigError, ShmflagsError

EXIT_OK = 0
EXIT_NOT_SERVED = 1
EXIT_USAGE = 2


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``shmflags``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["supervisor"]:
        from shmflags.supervisor.main import main as supervisor_main
        return supervisor_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        config = Config(**({"name": args.name} if args.name else {}))
    except ConfigError as exc:
        sys.stderr.write(f"shmflags: invalid configuration: {exc}\n")
        return EXIT_USAGE
    handler = COMMANDS[args.command]
    try:
        return handler(config, args)
    except BrokenPipeError:  # `shmflags dump | head`
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmflags",
        description="Inspect and manage a shmflags namespace (settings from SHMFLAGS_*).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--name", help="namespace (default: SHMFLAGS_NAME or 'default')")
        return p

    p = add("status", "Show what the workers see; exit 0 when a snapshot is served, else 1.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = add("eval", "Evaluate a flag for a context, as a worker would (no events sent).")
    p.add_argument("flag", help="flag key")
    p.add_argument("--context", required=True, metavar="JSON",
                   help="LD context JSON (single, multi-kind or old user format)")
    p.add_argument("--default", default="null", metavar="JSON",
                   help="default value as JSON (default: null)")
    p.add_argument("--detail", action="store_true",
                   help="print value, variationIndex and reason")
    p = add("dump", "Print the served flags and segments as LaunchDarkly JSON.")
    p.add_argument("--flag", metavar="KEY", help="only this flag")
    p.add_argument("--segment", metavar="KEY", help="only this segment")
    p.add_argument("--keys", action="store_true", help="only the flag keys")
    p = add("watch", "Print a line whenever the generation or state changes (Ctrl-C stops).")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between checks")
    p = add("cleanup", "Remove the namespace's shared-memory objects.")
    p.add_argument("--force", action="store_true",
                   help="even when a live supervisor still holds the namespace")
    sub.add_parser("supervisor", help="Run the supervisor (same as shmflags-supervisor).",
                   add_help=False)
    return parser


# -------------------------------------------------------------------------- commands


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    """``shmflags status [--json]``."""
    from shmflags.supervisor.status import read_report
    report = read_report(config.name, config.heartbeat_timeout)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(format_report(report))
    return EXIT_OK if report.get("serving") else EXIT_NOT_SERVED


def format_report(report: Dict[str, Any]) -> str:
    """The human-readable form of a status report."""
    lines = [f"namespace:   {report['name']}"]
    if report.get("state") is None:
        lines.append("state:       no supervisor has created this namespace")
        if report.get("last_error"):
            lines.append(f"detail:      {report['last_error']['message']}")
        return "\n".join(lines)
    alive = "running" if report.get("supervisor_alive") else "not running"
    age = report.get("heartbeat_age_s")
    lines += [
        f"state:       {report['state']} (since {_when(report.get('state_since'))})",
        f"source:      {report.get('source') or '-'}"
        + (" (last-known-good cache)" if report.get("from_cache") else ""),
        f"generation:  {report['generation']}"
        + ("" if report.get("serving") else " (nothing published yet)"),
        f"data:        {report['flags']} flags, {report['segments']} segments, "
        f"{report.get('data_size', 0)} bytes, updated {_when(report.get('last_update'))}",
        f"supervisor:  pid {report.get('supervisor_pid') or '-'} {alive}, heartbeat "
        + (f"{age:.1f} s ago" if age is not None else "never"),
        f"evaluator:   {report.get('evaluator')}",
        f"socket:      {report.get('socket') or '(events off)'}",
    ]
    events = report.get("events")
    if events:
        lines.append("events:      " + ", ".join(f"{k} {v}" for k, v in sorted(events.items())))
    error = report.get("last_error")
    if error:
        code = f" {error['statusCode']}" if error.get("statusCode") else ""
        lines.append(f"last error:  {error['kind']}{code}: {error.get('message', '')} "
                     f"({_when(error.get('time'))})")
    return "\n".join(lines)


def _when(seconds: Any) -> str:
    """Unix seconds as local ``YYYY-mm-dd HH:MM:SS`` (``never`` for none)."""
    if not seconds:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(seconds)))


def cmd_eval(config: Config, args: argparse.Namespace) -> int:
    """``shmflags eval FLAG --context JSON [--detail]``."""
    from shmflags.client.client import Client
    from shmflags.context import coerce
    try:
        context_doc = json.loads(args.context)
        default = json.loads(args.default)
    except ValueError as exc:
        sys.stderr.write(f"shmflags eval: --context/--default must be JSON: {exc}\n")
        return EXIT_USAGE
    context = coerce(context_doc)
    if not context.valid:
        sys.stderr.write(f"shmflags eval: invalid context: {context.error}\n")
        return EXIT_USAGE
    with _Served(config.name) as served:
        if served.buffer is None:
            return EXIT_NOT_SERVED
        detail = Client(served.backend()).variation_detail(args.flag, context, default)
    if args.detail:
        print(json.dumps({"value": detail.value, "variationIndex": detail.variation_index,
                          "reason": detail.reason}, sort_keys=True))
    else:
        print(json.dumps(detail.value))
    reason = detail.reason or {}
    return EXIT_NOT_SERVED if reason.get("errorKind") == "FLAG_NOT_FOUND" else EXIT_OK


def cmd_dump(config: Config, args: argparse.Namespace) -> int:
    """``shmflags dump [--flag KEY | --segment KEY | --keys]``: the LD JSON as stored."""
    with _Served(config.name) as served:
        if served.buffer is None:
            return EXIT_NOT_SERVED
        flags, segments = served.items()
    if args.keys:
        for key in flags:
            print(key)
        return EXIT_OK
    if args.flag or args.segment:
        item = flags.get(args.flag) if args.flag else segments.get(args.segment)
        if item is None:
            sys.stderr.write(f"shmflags dump: {args.flag or args.segment!r} not found\n")
            return EXIT_NOT_SERVED
        print(json.dumps(item, indent=2, sort_keys=True))
        return EXIT_OK
    print(json.dumps({"flags": flags, "segments": segments}, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_watch(config: Config, args: argparse.Namespace) -> int:
    """``shmflags watch``: one line per change of generation, state, source or error."""
    from shmflags.supervisor.status import read_report
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    last = None
    while True:
        report = read_report(config.name, config.heartbeat_timeout)
        error = report.get("last_error") or {}
        view = (report.get("generation"), report.get("state"), report.get("source"),
                error.get("message"), report.get("supervisor_alive"))
        if view != last:
            last = view
            print(f"{time.strftime('%H:%M:%S')} generation {report['generation']} "
                  f"{report.get('state') or 'ABSENT'} source={report.get('source') or '-'} "
                  f"flags={report['flags']} segments={report['segments']}"
                  + ("" if report.get("supervisor_alive") else " supervisor=down")
                  + (f" error={error.get('message')!r}" if error.get("message") else ""),
                  flush=True)
        time.sleep(max(0.01, args.interval))


def cmd_cleanup(config: Config, args: argparse.Namespace) -> int:
    """``shmflags cleanup [--force]``: unlink the control block and every generation."""
    from shmflags import shm
    from shmflags.supervisor.status import read_report
    report = read_report(config.name, config.heartbeat_timeout)
    if report.get("supervisor_alive") and not args.force:
        sys.stderr.write(f"shmflags cleanup: supervisor pid {report['supervisor_pid']} still "
                         f"serves namespace {config.name!r}; stop it first or use --force\n")
        return EXIT_NOT_SERVED
    removed = shm.cleanup(config.name)
    from shmflags.supervisor import bigsegments   # issue 11: the Big Segments mirror's objects
    removed += bigsegments.cleanup(config.name)
    print(f"namespace {config.name!r}: removed {len(removed)} shared-memory objects")
    return EXIT_OK


COMMANDS = {"status": cmd_status, "eval": cmd_eval, "dump": cmd_dump, "watch": cmd_watch,
            "cleanup": cmd_cleanup}


class _Served:
    """The namespace's current snapshot, mapped read-only for the duration of a command.

    ``buffer`` is ``None`` (and a message is on stderr) when nothing is served.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.attachment: Any = None
        self.buffer: Any = None
        self.parts: Dict[str, Any] = {}

    def __enter__(self) -> "_Served":
        from shmflags import shm
        try:
            self.attachment = shm.Attachment(self.name)
            self.parts = self.attachment.snapshot_parts()
            self.buffer = self.parts["buffer"]
        except ShmflagsError as exc:
            sys.stderr.write(f"shmflags: namespace {self.name!r} serves no snapshot: {exc}\n")
        return self

    def items(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """Every flag and segment as LD JSON, in key order."""
        from shmflags.snapshot.reader import SnapshotReader
        reader = SnapshotReader(self.buffer, base=self.parts.get("base"),
                                state=self.parts.get("state"),
                                base_state=self.parts.get("base_state"))
        try:
            flags = {e.key: reader.decode(e) for e in reader.flags()}
            segments = {e.key: reader.decode(e) for e in reader.segments()}
        finally:
            reader.release()
        return flags, segments

    def backend(self) -> Any:
        """An evaluator over the snapshot: the worker's backend, else the reference evaluator."""
        try:
            from shmflags.backend import open_snapshot
        except ImportError:
            from shmflags.client.client import Client
            flags, segments = self.items()
            return Client.from_data({"flags": flags, "segments": segments}).backend
        return open_snapshot(**self.parts)

    def __exit__(self, *exc: Any) -> None:
        if self.attachment is not None:
            self.attachment.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
