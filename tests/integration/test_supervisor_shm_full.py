"""A full /dev/shm: the error says how many bytes were needed, the old generation keeps serving,
publishing retries with backoff and succeeds once there is room (DESIGN §12).

The test runs a supervisor inside a private mount namespace (``unshare -m``) whose /dev/shm is
a 256 KiB tmpfs, so it never fills the machine's real /dev/shm. It needs root (or
CAP_SYS_ADMIN) and util-linux's ``unshare``; without them it is skipped, not passed.
"""
from __future__ import annotations

import json

from supervisor_harness import run_with_small_dev_shm

DRIVER = r'''
import json, sys, time
from pathlib import Path
from supervisor_harness import Harness, wait_for

tmp = Path(sys.argv[1])
h = Harness(tmp)
flags = tmp / "flags.yaml"
flags.write_text("flagValues:\n  color: small\n")
out = {}
try:
    sup = h.start(env={"SHMFLAGS_DATA_FILE": str(flags), "SHMFLAGS_GENERATION_GRACE": "0.2"})
    wait_for(lambda: h.flag_value("color") == "small", 10)
    out["first_generation"] = h.ctl()["generation"]
    big = "".join(f"  f{i}: {'x' * 2000}\n" for i in range(200))
    flags.write_text("flagValues:\n  color: big\n" + big)
    ctl = wait_for(lambda: (h.ctl()["last_error"] or {}).get("kind") == "STORE_ERROR"
                   and h.ctl(), 5.0)
    out["error"] = ctl["last_error"]["message"]
    out["state"] = ctl["state"]
    time.sleep(1.0)
    out["generation_while_full"] = h.ctl()["generation"]
    out["value_while_full"] = h.flag_value("color")
    flags.write_text("flagValues:\n  color: fits-again\n")
    wait_for(lambda: h.flag_value("color") == "fits-again", 10)
    out["state_after"] = h.ctl()["state"]
    out["log"] = sup.log()
finally:
    h.close()
print(json.dumps(out))
'''


def test_full_dev_shm_keeps_old_generation_and_reports_bytes_needed(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = run_with_small_dev_shm(driver, [str(tmp_path)], size="256k")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "bytes needed" in out["error"], out["error"]
    assert out["state"] == "INTERRUPTED"
    assert out["generation_while_full"] == out["first_generation"]
    assert out["value_while_full"] == "small"
    assert out["state_after"] == "VALID"
    assert out["log"].count("publish failed") >= 2  # retried with backoff
