"""Flag-file parsing: formats, defaults, merging and the whole-load failure rules (ld-protocol §9.1)."""
from __future__ import annotations

import json

import pytest

from shmflags import filedata
from shmflags.errors import DataError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_flags_values_and_segments(tmp_path):
    path = write(tmp_path, "f.yaml", """
flags:
  checkout:
    on: true
    variations: [false, true]
    fallthrough: {variation: 1}
flagValues:
  banner: "hello"
segments:
  beta:
    included: [alice]
    version: 7
""")
    flags, segments = filedata.load_files([path])
    assert flags["checkout"]["key"] == "checkout"
    assert flags["checkout"]["version"] == 1
    assert flags["banner"] == {"key": "banner", "version": 1, "on": True,
                               "fallthrough": {"variation": 0}, "variations": ["hello"]}
    assert segments == {"beta": {"key": "beta", "included": ["alice"], "version": 7}}


def test_json_file_and_explicit_version_kept(tmp_path):
    path = write(tmp_path, "f.json", json.dumps(
        {"flags": {"a": {"key": "a", "version": 42, "on": False, "variations": [1]}}}))
    flags, segments = filedata.load_files([path])
    assert flags["a"]["version"] == 42
    assert segments == {}


def test_json_content_without_extension_is_parsed(tmp_path):
    path = write(tmp_path, "flags", '{"flagValues": {"x": 3}}')
    flags, _ = filedata.load_files([path])
    assert flags["x"]["variations"] == [3]


def test_several_files_merge(tmp_path):
    a = write(tmp_path, "a.yaml", "flagValues: {one: 1}\n")
    b = write(tmp_path, "b.yaml", "flagValues: {two: 2}\nsegments: {s: {}}\n")
    flags, segments = filedata.load_files([a, b])
    assert sorted(flags) == ["one", "two"]
    assert segments["s"] == {"key": "s", "version": 1}


@pytest.mark.parametrize("second", [
    "flagValues: {one: 5}\n",
    "flags: {one: {on: true}}\n",
])
def test_duplicate_key_across_files_fails_whole_load(tmp_path, second):
    a = write(tmp_path, "a.yaml", "flagValues: {one: 1}\n")
    b = write(tmp_path, "b.yaml", second)
    with pytest.raises(DataError, match='"one" was used more than once'):
        filedata.load_files([a, b])


def test_flags_and_flag_values_clash_in_one_file(tmp_path):
    path = write(tmp_path, "a.yaml", "flags: {x: {on: true}}\nflagValues: {x: 1}\n")
    with pytest.raises(DataError, match="more than once"):
        filedata.load_files([path])


@pytest.mark.parametrize("text,match", [
    ("flags: [1, 2]\n", "'flags' must be a map"),
    ("- a\n- b\n", "top level must be a map"),
    ("flags: {a: 3}\n", "flags 'a' must be a map"),
    ("flags: {a: {version: 'x'}}\n", "version must be an integer"),
    ("flags: {a: {key: b}}\n", "they must match"),
    ("flags: {a: {on: true}\n", "invalid YAML"),
])
def test_malformed_files_are_data_errors(tmp_path, text, match):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(DataError, match=match):
        filedata.load_files([path])


def test_invalid_json_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="invalid JSON"):
        filedata.load_files([write(tmp_path, "x.json", '{"flags": ')])
    with pytest.raises(DataError, match="cannot read flag file"):
        filedata.load_files([str(tmp_path / "absent.yaml")])


def test_empty_file_is_empty_data(tmp_path):
    assert filedata.load_files([write(tmp_path, "e.yaml", "")]) == ({}, {})


def test_signature_changes_on_atomic_rename_with_same_size(tmp_path):
    path = write(tmp_path, "f.yaml", "flagValues: {a: 1}\n")
    before = filedata.file_signature([path])
    write(tmp_path, "g.yaml", "flagValues: {a: 2}\n")
    (tmp_path / "g.yaml").replace(path)
    after = filedata.file_signature([path])
    assert before != after
    assert filedata.file_signature([str(tmp_path / "none")]) == (None,)
