"""Tests for drafttrain.data.corpus: corpus configs, dir/jsonl/stdlib documents and the held-out set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drafttrain.config import load_config
from drafttrain.data.corpus import (
    DEFAULT_EXCLUDED_PACKAGES,
    CorpusConfig,
    Document,
    held_out_documents,
    iter_documents,
    stdlib_root,
)
from drafttrain.errors import DrafttrainError


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    """Create `files` (relative path -> text or bytes) under `root`."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def ids(documents) -> list[str]:
    return [document.id for document in documents]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_corpus_config_defaults():
    config = CorpusConfig()
    assert config.kind == "stdlib" and config.path is None
    assert config.include == ["**/*.py"] and config.exclude == []
    assert config.text_field == "text" and config.max_documents == 0
    assert config.exclude_packages == DEFAULT_EXCLUDED_PACKAGES
    assert config.exclude_packages is not DEFAULT_EXCLUDED_PACKAGES  # no shared mutable default


@pytest.mark.parametrize("kind", ["dir", "jsonl"])
def test_corpus_config_needs_path_for_dir_and_jsonl(kind):
    with pytest.raises(DrafttrainError, match=rf"corpus\.path: kind '{kind}' needs a path.*Fix"):
        CorpusConfig(kind=kind)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "csv"}, r"corpus\.kind: 'csv'.*'dir', 'jsonl', 'stdlib'"),
    ({"max_documents": -1}, r"corpus\.max_documents: -1 is negative"),
    ({"kind": "dir", "path": Path("x"), "include": []}, r"corpus\.include: no glob"),
    ({"text_field": ""}, r"corpus\.text_field: empty"),
])
def test_corpus_config_rejects_bad_values(kwargs, message):
    with pytest.raises(DrafttrainError, match=message):
        CorpusConfig(**kwargs)


def test_corpus_config_loads_from_yaml(tmp_path):
    yaml_path = tmp_path / "corpus.yaml"
    yaml_path.write_text("kind: dir\npath: src\ninclude: ['*.py']\nmax_documents: 3\n")
    config = load_config(CorpusConfig, yaml_path)
    assert config.path == Path("src") and config.include == ["*.py"] and config.max_documents == 3
    yaml_path.write_text("kind: jsonl\n")
    with pytest.raises(DrafttrainError, match="needs a path"):
        load_config(CorpusConfig, yaml_path)


# --------------------------------------------------------------------------------------------
# kind: dir
# --------------------------------------------------------------------------------------------


def test_dir_corpus_matches_include_and_exclude_sorted(tmp_path):
    root = write_files(tmp_path / "corpus", {
        "b.py": "b = 1\n", "a.py": "a = 1\n", "notes.txt": "text\n",
        "pkg/z.py": "z = 1\n", "pkg/sub/y.py": "y = 1\n", "skip/x.py": "x = 1\n", "pkg/gen_1.py": "g\n",
    })
    config = CorpusConfig(kind="dir", path=root, exclude=["skip", "**/gen_*.py"])
    documents = list(iter_documents(config))
    assert ids(documents) == ["a.py", "b.py", "pkg/sub/y.py", "pkg/z.py"]
    assert documents[0] == Document("a.py", "a = 1\n")


def test_dir_corpus_multiple_includes_and_limit(tmp_path):
    root = write_files(tmp_path, {"a.py": "a\n", "b.md": "b\n", "c.py": "c\n", "d/e.md": "e\n"})
    config = CorpusConfig(kind="dir", path=root, include=["**/*.py", "**/*.md"])
    assert ids(iter_documents(config)) == ["a.py", "b.md", "c.py", "d/e.md"]
    config.max_documents = 2
    assert ids(iter_documents(config)) == ["a.py", "b.md"]


def test_dir_corpus_skips_undecodable_files_with_counted_warning(tmp_path):
    root = write_files(tmp_path, {"good.py": "ok = 1\n", "bad1.py": b"\xff\xfe\x00bad", "bad2.py": b"\x80"})
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\) that are not valid UTF-8 \(first: bad1\.py\)"):
        documents = list(iter_documents(CorpusConfig(kind="dir", path=root)))
    assert ids(documents) == ["good.py"]


def test_dir_corpus_errors_name_the_field(tmp_path):
    with pytest.raises(DrafttrainError, match=r"corpus\.path: .*missing is not a directory.*Fix"):
        list(iter_documents(CorpusConfig(kind="dir", path=tmp_path / "missing")))
    with pytest.raises(DrafttrainError, match=r"corpus\.exclude: bad glob '/abs'.*Fix"):
        list(iter_documents(CorpusConfig(kind="dir", path=tmp_path, exclude=["/abs"])))


# --------------------------------------------------------------------------------------------
# kind: jsonl
# --------------------------------------------------------------------------------------------


def test_jsonl_corpus_ids_and_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"id": "alpha", "body": "first"}), "", json.dumps({"body": "second"}),
             json.dumps({"id": 7, "body": "third ✓"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    documents = list(iter_documents(CorpusConfig(kind="jsonl", path=path, text_field="body")))
    assert documents == [Document("alpha", "first"), Document("3", "second"), Document("7", "third ✓")]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", r"c\.jsonl:2: not valid JSON.*Fix"),
    ("[1, 2]", r"c\.jsonl:2: expected a JSON object, got list"),
    ('{"content": "x"}', r"c\.jsonl:2: field 'text' is missing.*corpus\.text_field.*this line has: content"),
    ('{"text": 5}', r"c\.jsonl:2: field 'text' is a int, expected a string"),
])
def test_jsonl_corpus_bad_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(DrafttrainError, match=message):
        list(iter_documents(CorpusConfig(kind="jsonl", path=path)))


def test_jsonl_corpus_missing_file(tmp_path):
    with pytest.raises(DrafttrainError, match=r"corpus\.path: JSONL file .*nope\.jsonl does not exist"):
        list(iter_documents(CorpusConfig(kind="jsonl", path=tmp_path / "nope.jsonl")))


# --------------------------------------------------------------------------------------------
# kind: stdlib
# --------------------------------------------------------------------------------------------

FAKE_STDLIB = {
    "os.py": "", "json.py": "", "tomllib/__init__.py": "", "tomllib/_parser.py": "", "json/__init__.py": "",
    "collections/__init__.py": "", "collections/abc.py": "", "collections/README.txt": "",
    "unittest/test/test_case.py": "", "ctypes/tests/t.py": "", "test/test_os.py": "",
    "site-packages/numpy/core.py": "", "idlelib/run.py": "", "lib2to3/main.py": "", "ensurepip/x.py": "",
    "turtledemo/demo.py": "", "tkinter/__init__.py": "", "__pycache__/os.py": "", "config-3.11/py.py": "",
    "json/tests/t.py": "", "jsonschema.py": "",
}


def test_stdlib_corpus_skips_tooling_tests_and_held_out_packages(tmp_path):
    root = write_files(tmp_path / "lib", FAKE_STDLIB)
    config = CorpusConfig(path=root, exclude_packages=["json", "tomllib"])
    assert ids(iter_documents(config)) == ["collections/__init__.py", "collections/abc.py", "jsonschema.py",
                                           "os.py"]
    assert ids(held_out_documents(config)) == ["json.py", "json/__init__.py", "tomllib/__init__.py",
                                              "tomllib/_parser.py"]


def test_real_stdlib_corpus_excludes_held_out_packages():
    config = CorpusConfig()
    documents = list(iter_documents(config))
    assert len(documents) > 100
    assert ids(documents) == sorted(ids(documents))
    excluded = set(config.exclude_packages)
    for document_id in ids(documents):
        parts = document_id.split("/")
        assert parts[0].removesuffix(".py") not in excluded, document_id
        assert not {"test", "tests", "site-packages", "idlelib", "tkinter"} & set(parts[:-1]), document_id
        assert document_id.endswith(".py")
    assert (stdlib_root(config) / documents[0].id).read_text(encoding="utf-8") == documents[0].text


def test_real_stdlib_held_out_yields_only_excluded_packages():
    config = CorpusConfig(max_documents=5)
    held_out = ids(held_out_documents(config))
    assert len(held_out) > 5  # max_documents limits training text, not the held-out set
    assert {i.split("/")[0].removesuffix(".py") for i in held_out} <= set(config.exclude_packages)
    assert "json/__init__.py" in held_out and "tomllib/_parser.py" in held_out
    assert not set(held_out) & set(ids(iter_documents(CorpusConfig())))


def test_stdlib_corpus_is_deterministic_and_limited():
    config = CorpusConfig(max_documents=12)
    first = list(iter_documents(config))
    assert len(first) == 12 and first == list(iter_documents(config))


def test_held_out_documents_errors(tmp_path):
    with pytest.raises(DrafttrainError, match=r"corpus\.kind: held-out documents exist only for kind "
                                              r"'stdlib'.*Fix"):
        held_out_documents(CorpusConfig(kind="dir", path=tmp_path))
    with pytest.raises(DrafttrainError, match=r"corpus\.exclude_packages: empty.*Fix"):
        held_out_documents(CorpusConfig(exclude_packages=[]))
    with pytest.raises(DrafttrainError, match=r"corpus\.path: stdlib directory .*nowhere does not exist"):
        list(iter_documents(CorpusConfig(path=tmp_path / "nowhere")))
