#!/usr/bin/env bash
# The README demo: a shmflags supervisor on the bundled example flag file and a gunicorn with
# 4 workers whose requests evaluate flags. Shows answers from several worker pids, edits the
# flag file, shows every worker switching, then stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh >/dev/null
PY=.venv/bin/python
work=$(mktemp -d /tmp/shmflags-demo.XXXXXX)
export SHMFLAGS_NAME="demo-$$"
export SHMFLAGS_STATE_DIR="$work/state"
export SHMFLAGS_DATA_FILE="$work/flags.yaml"
export SHMFLAGS_SOCKET="$work/events.sock"
export SHMFLAGS_SEND_EVENTS=false
cp examples/flags.yaml "$SHMFLAGS_DATA_FILE"
port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

sup_pid=""; gun_pid=""
cleanup() {
  [ -n "$gun_pid" ] && kill "$gun_pid" 2>/dev/null && wait "$gun_pid" 2>/dev/null || true
  [ -n "$sup_pid" ] && kill "$sup_pid" 2>/dev/null && wait "$sup_pid" 2>/dev/null || true
  .venv/bin/shmflags cleanup >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "### starting shmflags-supervisor on $SHMFLAGS_DATA_FILE (namespace $SHMFLAGS_NAME)"
.venv/bin/shmflags-supervisor >"$work/supervisor.log" 2>&1 &
sup_pid=$!
for _ in $(seq 50); do .venv/bin/shmflags status >/dev/null 2>&1 && break; sleep 0.1; done
.venv/bin/shmflags status

echo; echo "### starting gunicorn with 4 workers on 127.0.0.1:$port (no post_fork hook)"
BIND="127.0.0.1:$port" WORKERS=4 .venv/bin/gunicorn -c examples/gunicorn.conf.py \
  >"$work/gunicorn.log" 2>&1 &
gun_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done

show() {
  # Many requests so that every worker answers; print one line per distinct worker pid.
  for i in $(seq 40); do curl -s "http://127.0.0.1:$port/?user=user-$i&plan=pro"; echo; done |
    $PY -c '
import json, sys
seen = {}
for line in sys.stdin:
    if line.strip():
        doc = json.loads(line)
        seen.setdefault(doc["pid"], doc["flags"])
for pid, flags in sorted(seen.items()):
    print(f"  worker pid {pid}: {json.dumps(flags, sort_keys=True)}")
print(f"  ({len(seen)} worker processes answered)")'
}
echo; echo "### evaluations from the workers"
show

echo; echo "### editing the flag file: $("$PY" scripts/demo_edit.py "$SHMFLAGS_DATA_FILE")"
sleep 1.2
echo; echo "### the same requests after the edit: every worker switched"
show
echo; .venv/bin/shmflags status
echo; echo "### stopping gunicorn and the supervisor"
