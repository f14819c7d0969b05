"""TLS settings of the network sources: CA bundle and disabled verification, against an HTTPS fake."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest

from shmflags.config import Config
from shmflags.supervisor.sources.polling import PollingSource
from shmflags.supervisor.sources.streaming import StreamingSource
from tests.fakes.fake_ld import FakeLD
from tests.fakes.sink import RecordingSink

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

FLAG = {"key": "f1", "version": 1, "on": False, "variations": [1], "offVariation": 0}


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    return str(crt), str(key)


@pytest.fixture
def fake(cert: Tuple[str, str]) -> Iterator[FakeLD]:
    with FakeLD(tls=cert, heartbeat_interval=0.2) as f:
        f.set_data({"f1": FLAG}, {})
        yield f


def poll(fake: FakeLD, **http: Any) -> RecordingSink:
    sink = RecordingSink()
    cfg = Config("k", base_uri=fake.url, stream=False, http=http, environ={})
    src = PollingSource(cfg, sink, _interval=60)
    assert src.poll_once() is True
    return sink


def test_untrusted_certificate_is_a_recoverable_network_error(fake: FakeLD,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    sink = poll(fake)
    assert sink.of("init") == []
    state, err = sink.statuses()[-1]
    assert state == "INTERRUPTED" and err["kind"] == "NETWORK_ERROR"
    assert "certificate" in err["message"].lower() or "ssl" in err["message"].lower()


def test_ca_bundle_setting_trusts_the_certificate(fake: FakeLD, cert: Tuple[str, str]) -> None:
    sink = poll(fake, ca_certs=cert[0])
    assert sink.of("init")[0][1] == {"f1": FLAG}
    assert Path(cert[0]).exists()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_disable_ssl_verification(fake: FakeLD) -> None:
    sink = poll(fake, disable_ssl_verification=True)
    assert sink.of("init")[0][1] == {"f1": FLAG}


def test_streaming_over_tls_with_ca_bundle(fake: FakeLD, cert: Tuple[str, str]) -> None:
    sink = RecordingSink()
    cfg = Config("k", stream_uri=fake.url, http={"ca_certs": cert[0]}, environ={})
    src = StreamingSource(cfg, sink)
    src.start()
    try:
        assert sink.wait_count("init", 1)
        assert fake.wait_for_streams(1)
        fake.push("patch", {"path": "/flags/f1", "data": dict(FLAG, version=2)})
        assert sink.wait_count("upsert", 1)
    finally:
        src.stop()
    assert not src.running
