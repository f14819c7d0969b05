"""Run every case of ``tests/corpus/*.json`` through every evaluator backend.

Each file holds ``flags``, ``segments``, ``evaluations`` (``flag``, ``context``, ``default``,
``expect`` = ``{value, variationIndex, reason}``) and optionally ``allFlagsState``
(``context``, ``options``, ``expect`` = ``to_json_dict()``). Expectations are recorded from
ldclient by ``scripts/record_corpus.py``, never written by hand. The ``backend`` fixture
(``tests/conftest.py``) supplies the reference model, the pure-Python snapshot reader and the C
evaluator; each is wrapped in ``shmflags.Client`` so the client's handling of defaults and
invalid contexts is part of what is compared. The full detail is compared, not only the value,
as JSON text, so ``true`` vs ``1``, ``1.0`` vs ``1`` and ``-0.0`` vs ``0.0`` count as different at
any depth.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from shmflags import Client

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = sorted(CORPUS.glob("*.json"))


def _load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _strict(value: Any) -> str:
    """JSON text with sorted keys: unlike ``==``, tells ``true`` from ``1`` and ``1.0`` from ``1``
    at any depth, and ``-0.0`` from ``0.0``."""
    return json.dumps(value, sort_keys=True)


def test_corpus_is_present_and_recorded() -> None:
    assert len(FILES) >= 15, "the corpus lost files"
    for path in FILES:
        case = _load(path)
        assert case["evaluations"], f"{path.name} has no evaluations"
        for ev in case["evaluations"]:
            assert set(ev["expect"]) == {"value", "variationIndex", "reason"}, path.name


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_corpus_file(backend: Any, path: Path) -> None:
    case = _load(path)
    client = Client(backend(case.get("flags", {}), case.get("segments", {})))
    failures: List[str] = []
    for i, ev in enumerate(case["evaluations"]):
        d = client.variation_detail(ev["flag"], ev["context"], ev.get("default"))
        got = {"value": d.value, "variationIndex": d.variation_index, "reason": d.reason}
        want = ev["expect"]
        if _strict(got) != _strict(want):
            failures.append(f"#{i} {ev.get('note', '')} flag={ev['flag']} ctx={json.dumps(ev['context'])}\n"
                            f"   got  {got}\n   want {want}")
    for i, st in enumerate(case.get("allFlagsState", [])):
        got_all = client.all_flags_state(st["context"], **st.get("options", {})).to_json_dict()
        if _strict(got_all) != _strict(st["expect"]):
            failures.append(f"allFlagsState #{i} {st.get('options')}\n   got  {got_all}\n"
                            f"   want {st['expect']}")
    assert not failures, f"{path.name}: {len(failures)} mismatches\n" + "\n".join(failures)
