"""shm: publication, control block fields, seqlock, reaping, takeover, bad objects, permissions."""
from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import struct
import subprocess
import sys
import textwrap
import time
import uuid

import posix_ipc
import pytest

from shmflags import shm
from shmflags.errors import (ConfigError, SnapshotBusy, SnapshotError, SnapshotFormatError,
                             SnapshotUnavailable)
from shmflags.snapshot import format as fmt
from shmflags.snapshot.builder import SnapshotBuilder
from shmflags.snapshot.reader import SnapshotReader

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def ns():
    name = f"t-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    shm.cleanup(name)
    assert shm.list_objects(name) == (False, [])


def _snap(n: int = 3, version: int = 1) -> bytes:
    flags = {f"f{i}": {"key": f"f{i}", "version": version, "variations": [i]} for i in range(n)}
    return SnapshotBuilder(use_default_compilers=False).build(flags, {"s": {"key": "s",
                                                                           "version": 1}},
                                                              payload_version=version)


def _shm_path(obj_name: str) -> str:
    return os.path.join(shm.SHM_DIR, obj_name.lstrip("/"))


def test_names():
    assert shm.ctl_name("default") == "/shmflags.default.ctl"
    assert shm.data_name("a.b-c_1", 12) == "/shmflags.a.b-c_1.12"
    for bad in ["", "a/b", "x" * 65, "sp ace", None]:
        with pytest.raises(ConfigError):
            shm.ctl_name(bad)


def test_attach_without_namespace_is_unavailable(ns):
    with pytest.raises(SnapshotUnavailable, match="supervisor"):
        shm.Attachment(ns)


def test_control_block_exists_before_any_snapshot(ns):
    with shm.Publisher(ns) as pub:
        att = shm.Attachment(ns)
        st = att.status()
        assert st["state"] == "INITIALIZING" and st["generation"] == 0
        assert st["supervisor_pid"] == os.getpid() and st["supervisor_alive"] is True
        assert 0 <= st["heartbeat_age_s"] < 5
        assert att.generation() == 0
        with pytest.raises(SnapshotUnavailable, match="no snapshot published yet"):
            att.snapshot_buffer()
        assert os.path.getsize(_shm_path(shm.ctl_name(ns))) == fmt.CTL_SIZE
        att.close()
        assert pub.generation == 0


def test_publish_switch_and_raw_control_bytes(ns):
    with shm.Publisher(ns, grace=100) as pub:
        att = shm.Attachment(ns)
        gens = [pub.publish(_snap(n, version=n)) for n in (1, 2, 3)]
        assert gens == [1, 2, 3]
        buf = att.snapshot_buffer()
        r = SnapshotReader(buf)
        assert r.generation == 3 and r.n_flags == 3 and r.payload_version == 3
        assert att.mapped_generation == 3 and att.snapshot_buffer() is buf
        with open(_shm_path(shm.ctl_name(ns)), "rb") as f:
            raw = f.read()
        assert raw[:8] == b"SHMFLCTL"
        assert struct.unpack_from("<II", raw, 8) == (fmt.CTL_FORMAT_WORD, 1024)
        seq, gen, size, csum = struct.unpack_from("<QQQQ", raw, 16)
        assert seq % 2 == 0 and gen == 3 and size == len(_snap(3, 3)) and csum == r.header.checksum
        assert raw[400:400 + 64].split(b"\0")[0] == shm.data_name(ns, 3).encode()
        assert struct.unpack_from("<II", raw, 112) == (3, 1)
        st = att.status()
        assert (st["generation"], st["flags"], st["segments"], st["payload_version"]) == (3, 3, 1, 3)
        assert st["last_update"] == pytest.approx(time.time(), abs=5)
        att.close()


def test_publish_rejects_non_snapshot_without_creating_anything(ns):
    with shm.Publisher(ns) as pub:
        with pytest.raises(SnapshotFormatError):
            pub.publish(b"not a snapshot" * 20)
        assert shm.list_objects(ns) == (True, [])
        assert pub.publish(_snap()) == 1


def test_set_status_fields_and_state_since(ns):
    with shm.Publisher(ns) as pub:
        att = shm.Attachment(ns)
        pub.set_status("VALID", source="streaming", socket="/run/shmflags/x.sock",
                       from_cache=True)
        s1 = att.status()
        assert (s1["state"], s1["source"], s1["socket"], s1["from_cache"]) == \
            ("VALID", "streaming", "/run/shmflags/x.sock", True)
        time.sleep(0.02)
        pub.set_status("VALID", error={"kind": "NETWORK_ERROR", "message": "reset",
                                       "time": 1700000000.5})
        s2 = att.status()
        assert s2["state_since"] == s1["state_since"]       # same state: unchanged
        assert s2["last_error"] == {"kind": "NETWORK_ERROR", "statusCode": None,
                                    "time": 1700000000.5, "message": "reset"}
        pub.set_status("INTERRUPTED", error={"kind": "ERROR_RESPONSE", "statusCode": 401,
                                             "message": "\u00e9" * 200})
        s3 = att.status()
        assert s3["state"] == "INTERRUPTED" and s3["state_since"] > s1["state_since"]
        msg = s3["last_error"]["message"]
        assert msg == "\u00e9" * 128 and len(msg.encode()) == 256
        assert s3["last_error"]["statusCode"] == 401
        pub.set_status(error=None, big_segments={"status": "STALE", "available": True,
                                                 "synchronized_on": 1234})
        s4 = att.status()
        assert s4["last_error"] is None and s4["state"] == "INTERRUPTED"
        assert s4["big_segments"]["status"] == "STALE"
        assert s4["big_segments"]["synchronized_on"] == 1234
        with pytest.raises(ValueError):
            pub.set_status("BROKEN")
        with pytest.raises(ValueError):
            pub.set_status(source="x" * 40)
        att.close()


def test_heartbeat_advances(ns):
    with shm.Publisher(ns) as pub:
        att = shm.Attachment(ns)
        before = att.control().heartbeat_mono_ms
        time.sleep(0.03)
        pub.heartbeat()
        after = att.control()
        assert after.heartbeat_mono_ms >= before + 20
        assert att.status()["heartbeat_age_s"] < 1
        att.close()


def test_superseded_generations_unlinked_after_grace(ns):
    with shm.Publisher(ns, grace=10.0) as pub:
        for _ in range(3):
            pub.publish(_snap())
        # issue 12: the previous generation waits for its grace period; older ones go at
        # the next publish, so a burst never piles up objects
        assert shm.list_objects(ns) == (True, [2, 3])
        assert pub.reap() == []                       # grace not over
        assert pub.reap(now=time.monotonic() + 11) == [shm.data_name(ns, 2)]
        assert shm.list_objects(ns) == (True, [3])


def test_reader_keeps_unlinked_mapping_valid(ns):
    with shm.Publisher(ns, grace=0) as pub:
        att = shm.Attachment(ns)
        pub.publish(_snap(5))
        buf = att.snapshot_buffer()
        view = memoryview(buf)
        pub.publish(_snap(6))
        pub.publish(_snap(7))                          # generation 1 unlinked by now
        assert shm.list_objects(ns) == (True, [3])
        assert SnapshotReader(view).n_flags == 5       # still mapped, still readable
        assert SnapshotReader(att.snapshot_buffer()).n_flags == 7
        view.release()
        att.close()


def test_missing_object_takes_newer_or_keeps_previous(ns):
    with shm.Publisher(ns, grace=100) as pub:
        att = shm.Attachment(ns)
        pub.publish(_snap(1))
        att.snapshot_buffer()
        pub.publish(_snap(2))
        posix_ipc.unlink_shared_memory(shm.data_name(ns, 2))   # vanished (say, cleanup)
        buf = att.snapshot_buffer()                            # keeps generation 1
        assert att.mapped_generation == 1 and SnapshotReader(buf).n_flags == 1
        pub.publish(_snap(3))
        assert SnapshotReader(att.snapshot_buffer()).n_flags == 3
        att.close()
        fresh = shm.Attachment(ns)
        posix_ipc.unlink_shared_memory(shm.data_name(ns, 3))
        with pytest.raises(SnapshotUnavailable):
            fresh.snapshot_buffer()
        fresh.close()


def test_corrupt_generation_rejected_once_and_previous_kept(ns, caplog):
    with shm.Publisher(ns, grace=100) as pub:
        att = shm.Attachment(ns)
        pub.publish(_snap(1))
        att.snapshot_buffer()
        pub.publish(_snap(2))
        fd = os.open(_shm_path(shm.data_name(ns, 2)), os.O_RDWR)
        os.pwrite(fd, b"\xff", 300)                            # flip a body byte
        os.close(fd)
        with caplog.at_level(logging.ERROR, logger="shmflags.shm"):
            for _ in range(5):
                assert SnapshotReader(att.snapshot_buffer()).n_flags == 1
        lines = [r for r in caplog.records if "rejecting" in r.getMessage()]
        assert len(lines) == 1
        assert "checksum" in lines[0].getMessage() and "keeping generation 1" in \
            lines[0].getMessage()
        pub.publish(_snap(3))
        assert SnapshotReader(att.snapshot_buffer()).n_flags == 3
        att.close()


def test_corrupt_first_generation_raises_format_error(ns):
    with shm.Publisher(ns) as pub:
        pub.publish(_snap(1))
        fd = os.open(_shm_path(shm.data_name(ns, 1)), os.O_RDWR)
        os.pwrite(fd, b"X", 0)
        os.close(fd)
        att = shm.Attachment(ns)
        with pytest.raises(SnapshotFormatError, match="magic"):
            att.snapshot_buffer()
        att.close()


def test_full_shm_is_an_error_and_previous_keeps_serving(ns, monkeypatch):
    with shm.Publisher(ns) as pub:
        pub.publish(_snap(1))

        real_pwrite = os.pwrite
        calls = []

        def full(fd, data, offset):
            # a tmpfs that fills up: the first write lands partly, the next one fails
            calls.append(offset)
            if len(calls) == 1:
                return real_pwrite(fd, memoryview(data)[:64], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "pwrite", full)
        data = _snap(2)
        with pytest.raises(SnapshotError, match=f"{len(data)} bytes needed"):
            pub.publish(data)
        monkeypatch.undo()
        assert shm.list_objects(ns) == (True, [1])
        att = shm.Attachment(ns)
        assert SnapshotReader(att.snapshot_buffer()).n_flags == 1
        assert pub.publish(data) == 2                 # retry reuses the number
        att.close()


def test_modes_set_explicitly_whatever_the_umask(ns):
    old = os.umask(0)
    try:
        with shm.Publisher(ns, mode=0o640, group=0) as pub:
            pub.publish(_snap())
            for obj in (shm.ctl_name(ns), shm.data_name(ns, 1)):
                st = os.stat(_shm_path(obj))
                assert stat.S_IMODE(st.st_mode) == 0o640, obj
                assert st.st_gid == 0
    finally:
        os.umask(old)
    shm.cleanup(ns)
    old = os.umask(0o077)
    try:
        with shm.Publisher(ns, mode=0o644, group="daemon") as pub:
            pub.publish(_snap())
            for obj in (shm.ctl_name(ns), shm.data_name(ns, 1)):
                st = os.stat(_shm_path(obj))
                assert stat.S_IMODE(st.st_mode) == 0o644
                assert st.st_gid == 1
    finally:
        os.umask(old)
    with pytest.raises(ConfigError):
        shm.Publisher(ns, group="no-such-group-xyz")


def test_reader_mappings_are_read_only(ns):
    with shm.Publisher(ns) as pub:
        pub.publish(_snap())
        att = shm.Attachment(ns)
        buf = att.snapshot_buffer()
        with pytest.raises(TypeError):
            buf[0:1] = b"X"
        assert memoryview(buf).readonly
        with pytest.raises(TypeError):
            att._mm[0:1] = b"X"
        att.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_unprivileged_reader_can_read_but_not_write(ns):
    with shm.Publisher(ns, mode=0o644) as pub:
        pub.publish(_snap(4))
        code = textwrap.dedent(f"""
            import os, sys, posix_ipc
            sys.path.insert(0, {ROOT!r})
            from shmflags import shm       # import first: the venv may be unreadable to nobody
            from shmflags.snapshot.reader import SnapshotReader
            os.setgroups([]); os.setgid(65534); os.setuid(65534)
            att = shm.Attachment({ns!r})
            assert SnapshotReader(att.snapshot_buffer()).n_flags == 4
            for name in ({shm.ctl_name(ns)!r}, {shm.data_name(ns, 1)!r}):
                try:
                    posix_ipc.SharedMemory(name, 0)
                except posix_ipc.PermissionsError:
                    pass
                else:
                    sys.exit("opened " + name + " read-write")
            print("ok")
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "ok"


def _dead_supervisor(ns: str, publishes: int) -> None:
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from shmflags import shm
        from shmflags.snapshot.builder import SnapshotBuilder
        pub = shm.Publisher({ns!r}, grace=1000)
        b = SnapshotBuilder(use_default_compilers=False)
        for i in range({publishes}):
            pub.publish(b.build({{"k": {{"key": "k", "version": i + 1}}}}, {{}}))
        os._exit(0)      # like kill -9: nothing cleaned up
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_takeover_after_dead_supervisor(ns):
    _dead_supervisor(ns, 3)
    assert shm.list_objects(ns) == (True, [2, 3])     # its current and previous generation
    att = shm.Attachment(ns)
    assert SnapshotReader(att.snapshot_buffer()).find_flag("k").version == 3
    assert att.status()["supervisor_alive"] is False
    with shm.Publisher(ns, grace=5) as pub:
        assert pub.generation == 3
        assert att.status()["supervisor_pid"] == os.getpid()
        assert SnapshotReader(att.snapshot_buffer()).find_flag("k").version == 3   # still served
        assert pub.publish(_snap(2)) == 4
        assert att.snapshot_buffer() and att.mapped_generation == 4
        # the leftover older than the dead one's current went at the first publish; its
        # current, now the previous generation, waits for the grace period
        assert pub.pending() == [shm.data_name(ns, 3)]
        assert shm.list_objects(ns) == (True, [3, 4])
        pub.reap(now=time.monotonic() + 6)
        assert shm.list_objects(ns) == (True, [4])
    att.close()


def test_takeover_skips_generations_left_above_current(ns):
    with shm.Publisher(ns, grace=100) as pub:
        pub.publish(_snap())
    # A crash between creating generation 7's object and announcing it.
    o = posix_ipc.SharedMemory(shm.data_name(ns, 7), posix_ipc.O_CREX, size=64)
    o.close_fd()
    with shm.Publisher(ns) as pub:
        assert pub.publish(_snap()) == 8


def test_live_supervisor_is_not_taken_over(ns):
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from shmflags import shm
        pub = shm.Publisher({ns!r})
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.05)
        with pytest.raises(SnapshotError, match=f"live supervisor \\(pid {child.pid}\\)"):
            shm.Publisher(ns)
        with shm.Publisher(ns, force=True) as pub:
            assert pub.status()["supervisor_pid"] == os.getpid()
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_writer_died_inside_write_section(ns):
    with shm.Publisher(ns) as pub:
        pub.publish(_snap())
    fd = os.open(_shm_path(shm.ctl_name(ns)), os.O_RDWR)
    mm = mmap.mmap(fd, fmt.CTL_SIZE)
    os.close(fd)
    seq = struct.unpack_from("<Q", mm, 16)[0]
    struct.pack_into("<Q", mm, 16, seq + 1)          # odd forever
    struct.pack_into("<q", mm, 56, 0)                # and no live pid
    att = shm.Attachment(ns)
    t = time.monotonic()
    with pytest.raises(SnapshotBusy, match="kept changing"):
        att.control()
    assert time.monotonic() - t < 5
    with shm.Publisher(ns) as pub:                   # takeover closes the section
        assert att.control().generation == 1
        assert struct.unpack_from("<Q", mm, 16)[0] % 2 == 0
        assert pub.publish(_snap()) == 2
    mm.close()
    att.close()


def test_cleanup_removes_namespace(ns):
    with shm.Publisher(ns, grace=100) as pub:
        pub.publish(_snap())
        pub.publish(_snap())
    removed = shm.Publisher.cleanup(ns)
    assert sorted(removed) == sorted([shm.ctl_name(ns), shm.data_name(ns, 1),
                                      shm.data_name(ns, 2)])
    assert shm.list_objects(ns) == (False, [])
    assert shm.cleanup(ns) == []


def test_replaced_detects_recreated_namespace(ns):
    with shm.Publisher(ns):
        pass
    att = shm.Attachment(ns)
    assert att.replaced() is False
    shm.cleanup(ns)
    assert att.replaced() is True
    with shm.Publisher(ns):
        assert att.replaced() is True
    att.close()


def test_control_block_being_created_is_unavailable_not_corrupt(ns):
    o = posix_ipc.SharedMemory(shm.ctl_name(ns), posix_ipc.O_CREX)
    with pytest.raises(SnapshotUnavailable, match="being created"):
        shm.Attachment(ns)                          # not sized yet
    os.ftruncate(o.fd, fmt.CTL_SIZE)
    o.close_fd()
    with pytest.raises(SnapshotUnavailable, match="being created"):
        shm.Attachment(ns)
    fd = os.open(_shm_path(shm.ctl_name(ns)), os.O_RDWR)
    os.pwrite(fd, b"NOTSHMFL", 0)
    os.close(fd)
    with pytest.raises(SnapshotFormatError, match="expected magic"):
        shm.Attachment(ns)
    # A supervisor replaces a foreign control block rather than failing.
    with shm.Publisher(ns) as pub:
        assert pub.publish(_snap()) == 1
    assert shm.Attachment(ns).generation() == 1


def test_seq_is_odd_inside_every_write_section_and_even_outside(ns):
    with shm.Publisher(ns) as pub:
        att = shm.Attachment(ns)
        seen = []
        pub._write(lambda: seen.append(att._words[fmt.CTL_WORD_SEQ]))
        assert len(seen) == 1 and seen[0] % 2 == 1
        before = att._words[fmt.CTL_WORD_SEQ]
        assert before % 2 == 0 and before == seen[0] + 1
        pub.publish(_snap())
        pub.set_status("VALID")
        pub.heartbeat()
        after = att._words[fmt.CTL_WORD_SEQ]
        assert after == before + 6          # three write sections, two increments each
        assert att.generation() == att.control().generation == 1
        with pytest.raises(ValueError):
            att.control_bytes(0, fmt.CTL_SIZE + 1)
        assert att.control_bytes(24, 32) == struct.pack("<Q", 1)
        att.close()


def test_concurrent_writer_threads_keep_reads_consistent(ns):
    """publish, set_status and heartbeat from several threads share one seqlock writer."""
    import threading
    with shm.Publisher(ns, grace=0) as pub:
        att = shm.Attachment(ns)
        stop = threading.Event()
        errors = []

        def publisher():
            b = SnapshotBuilder(use_default_compilers=False)
            while not stop.is_set():
                n = pub.generation + 1
                pub.publish(b.build({f"f{i}": {"key": f"f{i}", "version": 1}
                                     for i in range(n % 4 + 1)}, {}, payload_version=n))

        def statuser():
            i = 0
            while not stop.is_set():
                i += 1
                pub.set_status(error={"kind": "UNKNOWN", "statusCode": i % 600,
                                      "message": str(i % 600) * 3})
                pub.heartbeat()

        threads = [threading.Thread(target=f) for f in (publisher, statuser, statuser)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 1.5
            reads = 0
            while time.monotonic() < deadline:
                c = att.control()
                reads += 1
                if c.generation and (c.payload_version != c.generation
                                     or c.n_flags != c.generation % 4 + 1
                                     or c.data_name != shm.data_name(ns, c.generation)):
                    errors.append(("publish", c.generation, c.payload_version, c.n_flags))
                if c.error_kind and c.error_message != str(c.error_status) * 3:
                    errors.append(("status", c.error_status, c.error_message))
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert errors == []
        assert reads > 100 and pub.generation > 5
        assert c.seq % 2 == 0
        att.close()


# ------------------------------------------------------------------ layered generations


def _layered_builder() -> SnapshotBuilder:
    return SnapshotBuilder(compact_fraction=100.0)


def _flags(n: int, version: int = 1) -> dict:
    return {f"f{i}": {"key": f"f{i}", "version": version, "on": True, "variations": [i, "x"],
                      "fallthrough": {"variation": 0}, "offVariation": 1} for i in range(n)}


def _gens(ns) -> list:
    return shm.list_objects(ns)[1]


def test_overlay_publish_keeps_its_base_and_workers_reuse_the_base_mapping(ns):
    from shmflags.backend import open_snapshot
    from shmflags.context import Context
    pub = shm.Publisher(ns, grace=0.0)
    att = shm.Attachment(ns)
    try:
        b = _layered_builder()
        flags = _flags(50)
        g1 = pub.publish(b.build(flags, {}))
        parts1 = att.snapshot_parts()
        assert parts1["base"] is None
        snap1 = open_snapshot(**parts1)
        assert snap1.evaluate("f3", Context.create("u"))[0] == 3
        for n in range(1, 6):
            key = f"f{n}"
            flags = dict(flags, **{key: dict(flags[key], version=1 + n, variations=[-n, "x"])})
            g = pub.publish(b.build(flags, {}, changed=([key], [])))
            pub.reap()
            # the base (g1) stays linked while it is the base of the current generation;
            # superseded overlays go
            assert g1 in _gens(ns) and g in _gens(ns) and len(_gens(ns)) <= 3, _gens(ns)
            parts = att.snapshot_parts()
            assert parts["base"] is parts1["buffer"]          # the same mapping, reused
            assert parts["base_state"] is parts1["state"]     # ... with its verification state
            h = fmt.unpack_header(parts["buffer"])
            assert h.generation == g and h.base_generation == g1
            snap = open_snapshot(**parts)
            assert snap.evaluate(key, Context.create("u"))[0] == -n
            assert snap.evaluate("f40", Context.create("u"))[0] == 40
        ctl = att.control()
        assert ctl.data_size == len(parts["buffer"]) < len(parts1["buffer"])
        # A compaction (self-contained) supersedes the base: it is reaped like any other.
        g_full = pub.publish(b.build(flags, {}))
        pub.reap()
        assert _gens(ns) == [g_full], _gens(ns)
        parts = att.snapshot_parts()
        assert parts["base"] is None and fmt.unpack_header(parts["buffer"]).generation == g_full
    finally:
        att.close()
        pub.close()


def test_overlay_on_an_unknown_base_is_refused(ns):
    pub = shm.Publisher(ns, grace=0.0)
    try:
        b = _layered_builder()
        flags = _flags(5)
        b.build(flags, {})                                  # never published
        flags = dict(flags, f1=dict(flags["f1"], version=5))
        with pytest.raises(shm.SnapshotBaseMissing, match="has not published"):
            pub.publish(b.build(flags, {}, changed=(["f1"], [])))
        assert _gens(ns) == []
        # a base unlinked behind the publisher's back is refused too
        g = pub.publish(b.build(flags, {}))
        shm._unlink(shm.data_name(ns, g))
        flags = dict(flags, f2=dict(flags["f2"], version=5))
        with pytest.raises(shm.SnapshotBaseMissing):
            pub.publish(b.build(flags, {}, changed=(["f2"], [])))
    finally:
        pub.close()


def test_missing_base_is_like_a_missing_object(ns, caplog):
    """ENOENT on the base: reread the control block; with nothing newer, keep serving."""
    pub = shm.Publisher(ns, grace=100.0)
    att = shm.Attachment(ns)
    try:
        b = _layered_builder()
        flags = _flags(5)
        g1 = pub.publish(b.build(flags, {}))
        flags = dict(flags, f1=dict(flags["f1"], version=5))
        g2 = pub.publish(b.build(flags, {}, changed=(["f1"], [])))
        fresh = shm.Attachment(ns)          # has not mapped g1
        shm._unlink(shm.data_name(ns, g1))
        with pytest.raises(SnapshotUnavailable, match=f"shmflags.{ns}.{g1}"):
            fresh.snapshot_buffer()
        fresh.close()
        # the first attachment mapped nothing yet either; map after the base is back
        assert g2 in _gens(ns)
    finally:
        att.close()
        pub.close()


def test_bad_base_is_rejected_and_the_previous_generation_kept(ns):
    pub = shm.Publisher(ns, grace=100.0)
    att = shm.Attachment(ns)
    try:
        b = _layered_builder()
        flags = _flags(5)
        g1 = pub.publish(b.build(flags, {}))
        assert att.snapshot_parts()["base"] is None
        flags = dict(flags, f1=dict(flags["f1"], version=5))
        overlay = bytearray(b.build(flags, {}, changed=(["f1"], [])))
        struct.pack_into("<Q", overlay, fmt.OFF_BASE_CHECKSUM, 12345)   # names another base
        pub._bases[(12345, fmt.unpack_header(overlay).base_size)] = (g1, shm.data_name(ns, g1))
        g2 = pub.publish(fmt.reseal(overlay))
        assert att.snapshot_buffer() is not None and att.mapped_generation == g1
        assert g2 != g1
    finally:
        att.close()
        pub.close()
