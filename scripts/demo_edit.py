"""Demo helper: change one flag in an LD flag file (atomically, by rename) and say which.

Flips the first boolean in ``flagValues`` if there is one, else toggles ``on`` of the first
flag in ``flags``.
"""
import os
import sys

import yaml


def main(path: str) -> None:
    with open(path) as fh:
        data = yaml.safe_load(fh)
    change = None
    for key, value in (data.get("flagValues") or {}).items():
        if isinstance(value, bool):
            data["flagValues"][key] = not value
            change = f"flagValues.{key}: {value} -> {not value}"
            break
    if change is None:
        for key, flag in (data.get("flags") or {}).items():
            flag["on"] = not flag.get("on", False)
            flag["version"] = int(flag.get("version", 1)) + 1
            change = f"flags.{key}.on -> {flag['on']}"
            break
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    os.replace(tmp, path)
    print(change)


if __name__ == "__main__":
    main(sys.argv[1])
