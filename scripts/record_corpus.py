#!/usr/bin/env python3
"""Record the expected results of the evaluation corpus by running ldclient (the oracle).

Test tooling, run by hand. For every ``tests/corpus/*.json`` (or the files given), loads the
``flags``/``segments`` into an ``ldclient.LDClient`` and rewrites each ``evaluations[*].expect``
with ``variation_detail``'s value, variation index and reason, and each
``allFlagsState[*].expect`` with ``all_flags_state(...).to_json_dict()``. Expected results are
therefore never written by hand. A case file whose data ldclient refuses is reported and left
unchanged.

Usage::

    .venv/bin/python scripts/record_corpus.py            # every corpus file
    .venv/bin/python scripts/record_corpus.py tests/corpus/semver.json
    .venv/bin/python scripts/record_corpus.py --check    # exit 1 if any file would change
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from differential.oracle import Oracle, OracleRejected  # noqa: E402


def record(oracle: Oracle, case: Dict[str, Any]) -> Dict[str, Any]:
    """Return ``case`` with every ``expect`` recorded from ldclient.

    :raises OracleRejected: when ldclient refuses the flag data
    """
    oracle.load(case.get("flags", {}), case.get("segments", {}))
    for ev in case.get("evaluations", []):
        ev["expect"] = oracle.detail(ev["flag"], ev["context"], ev.get("default"))
    for st in case.get("allFlagsState", []):
        st["expect"] = oracle.all_flags(st["context"], **st.get("options", {}))
    return case


def dump(case: Dict[str, Any]) -> str:
    """The canonical text of a corpus file (stable key order, one value per line)."""
    return json.dumps(case, indent=1, ensure_ascii=False) + "\n"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="only report files that would change")
    args = parser.parse_args(argv)
    files = args.files or sorted((ROOT / "tests" / "corpus").glob("*.json"))
    oracle = Oracle()
    changed = 0
    try:
        for path in files:
            text = path.read_text(encoding="utf-8")
            try:
                case = record(oracle, json.loads(text))
            except OracleRejected as exc:
                print(f"{path}: ldclient refuses this data ({exc}); not recorded", file=sys.stderr)
                changed += 1
                continue
            new = dump(case)
            if new != text:
                changed += 1
                if args.check:
                    print(f"{path}: expectations differ from ldclient's")
                else:
                    path.write_text(new, encoding="utf-8")
                    print(f"{path}: recorded")
    finally:
        oracle.close()
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
