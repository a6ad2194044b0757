"""Training corpora: where the text comes from (a directory, a JSONL file or the Python stdlib).

`CorpusConfig` is a typed config block (loadable with :func:`drafttrain.config.load_config`);
:func:`iter_documents` turns it into a deterministic stream of :class:`Document` objects.

For ``kind: stdlib`` the running interpreter's standard library is the corpus, minus tests,
GUI/tooling packages and the ``exclude_packages`` top-level names. Those held-out packages
never reach training; :func:`held_out_documents` yields exactly them, so evaluation prompts
can be built from code the model never saw.
"""

from __future__ import annotations

import json
import os
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from drafttrain.errors import DrafttrainError

DEFAULT_EXCLUDED_PACKAGES = ["json", "email", "http", "urllib", "xml", "asyncio", "tomllib", "zoneinfo"]

#: Directory names never entered when walking the standard library.
STDLIB_SKIPPED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "ensurepip",
    "turtledemo", "tkinter", "__pycache__", "lib-dynload",
})


@dataclass
class CorpusConfig:
    """Where training text comes from.

    kind: "dir" (files under `path` matching `include` and not `exclude` globs), "jsonl"
    (one JSON object per line of `path`, text in `text_field`) or "stdlib" (this Python's
    standard library; `path` optionally points at another stdlib root).
    exclude_packages: stdlib top-level packages/modules held out of training (kind stdlib).
    max_documents: stop after this many documents (0 = all).
    """

    kind: Literal["dir", "jsonl", "stdlib"] = "stdlib"
    path: Path | None = None
    include: list[str] = field(default_factory=lambda: ["**/*.py"])
    exclude: list[str] = field(default_factory=list)
    text_field: str = "text"
    exclude_packages: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDED_PACKAGES))
    max_documents: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("dir", "jsonl", "stdlib"):
            raise DrafttrainError(f"corpus.kind: {self.kind!r} is not a corpus kind. "
                                  "Fix: use one of 'dir', 'jsonl', 'stdlib'.")
        if self.path is not None:
            self.path = Path(self.path)
        if self.kind in ("dir", "jsonl") and self.path is None:
            raise DrafttrainError(f"corpus.path: kind {self.kind!r} needs a path. "
                                  f"Fix: set corpus.path to the {_path_noun(self.kind)}.")
        if self.max_documents < 0:
            raise DrafttrainError(f"corpus.max_documents: {self.max_documents} is negative. "
                                  "Fix: use 0 (all documents) or a positive count.")
        if self.kind == "dir" and not self.include:
            raise DrafttrainError("corpus.include: no glob given, so no file would be read. "
                                  "Fix: give at least one pattern such as '**/*.py'.")
        if not self.text_field:
            raise DrafttrainError("corpus.text_field: empty. Fix: name the JSON field holding the text.")


def _path_noun(kind: str) -> str:
    return "directory of files" if kind == "dir" else "JSONL file"


@dataclass(frozen=True)
class Document:
    """One unit of training text; `id` is stable (relative path, JSON id or line number)."""

    id: str
    text: str


def iter_documents(config: CorpusConfig) -> Iterator[Document]:
    """The corpus's documents in a deterministic order, at most `config.max_documents` of them."""
    if config.kind == "jsonl":
        documents = _iter_jsonl(config.path, config.text_field)
    elif config.kind == "dir":
        documents = _read_files(config.path, dir_files(config))
    else:
        root = stdlib_root(config)
        documents = _read_files(root, _stdlib_files(root, config.exclude_packages, held_out=False))
    return _limit(documents, config.max_documents)


def held_out_documents(config: CorpusConfig) -> Iterator[Document]:
    """Only the stdlib files of `config.exclude_packages` (text training never sees), sorted.

    `config.max_documents` does not apply: it limits training text, not the held-out set.
    """
    if config.kind != "stdlib":
        raise DrafttrainError(f"corpus.kind: held-out documents exist only for kind 'stdlib', got "
                              f"{config.kind!r}. Fix: use kind: stdlib, or keep evaluation text in "
                              "a separate corpus.")
    if not config.exclude_packages:
        raise DrafttrainError("corpus.exclude_packages: empty, so nothing is held out. "
                              "Fix: list the stdlib packages to keep out of training, e.g. [json, email].")
    root = stdlib_root(config)
    return _read_files(root, _stdlib_files(root, config.exclude_packages, held_out=True))


def stdlib_root(config: CorpusConfig) -> Path:
    """The standard library directory read for kind 'stdlib' (`config.path` if set)."""
    root = config.path if config.path is not None else Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DrafttrainError(f"corpus.path: stdlib directory {root} does not exist. "
                              "Fix: leave corpus.path unset to use this Python's standard library.")
    return root


def _limit(documents: Iterator[Document], max_documents: int) -> Iterator[Document]:
    for count, document in enumerate(documents, start=1):
        yield document
        if max_documents and count >= max_documents:
            return


# --------------------------------------------------------------------------------------------
# Files: directories and the standard library
# --------------------------------------------------------------------------------------------


def dir_files(config: CorpusConfig) -> list[Path]:
    """Files under `config.path` matching an include glob and no exclude glob, sorted by relative path."""
    root = config.path
    if not root.is_dir():
        raise DrafttrainError(f"corpus.path: {root} is not a directory. "
                              "Fix: point corpus.path at the folder holding the corpus files.")
    included = {p for pattern in config.include for p in _glob(root, pattern, "include") if p.is_file()}
    excluded = {p for pattern in config.exclude for p in _glob(root, pattern, "exclude")}
    kept = (p for p in included if not _is_excluded(p, root, excluded))
    return sorted(kept, key=lambda p: p.relative_to(root).as_posix())


def _glob(root: Path, pattern: str, field_name: str) -> list[Path]:
    try:
        return list(root.glob(pattern))
    except (ValueError, NotImplementedError) as err:
        raise DrafttrainError(f"corpus.{field_name}: bad glob {pattern!r} ({err}). "
                              "Fix: use a pattern relative to corpus.path, such as 'src/**/*.py'.") from err


def _is_excluded(path: Path, root: Path, excluded: set[Path]) -> bool:
    """True if `path` or a folder containing it (below `root`) matched an exclude glob."""
    relative = path.relative_to(root)
    folders = [root / parent for parent in relative.parents if parent != Path(".")]
    return path in excluded or any(folder in excluded for folder in folders)


def _stdlib_files(root: Path, exclude_packages: list[str], held_out: bool) -> list[Path]:
    """`.py` files of the stdlib at `root`: outside `exclude_packages`, or only inside them."""
    excluded = set(exclude_packages)
    files: list[Path] = []
    for directory, subdirs, names in os.walk(root):
        here = Path(directory)
        top_level = here == root
        subdirs[:] = sorted(d for d in subdirs if _enter_stdlib_dir(d, top_level, excluded, held_out))
        for name in sorted(names):
            if name.endswith(".py") and _keep_stdlib_file(name, top_level, excluded, held_out):
                files.append(here / name)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _enter_stdlib_dir(name: str, top_level: bool, excluded: set[str], held_out: bool) -> bool:
    if name in STDLIB_SKIPPED_DIRS or name.startswith("config-"):
        return False
    if not top_level:
        return True
    return (name in excluded) == held_out


def _keep_stdlib_file(name: str, top_level: bool, excluded: set[str], held_out: bool) -> bool:
    if not top_level:
        return True  # inside a package already chosen by _enter_stdlib_dir
    return (name[: -len(".py")] in excluded) == held_out


def _read_files(root: Path, files: list[Path]) -> Iterator[Document]:
    """Each file as a Document (id = path relative to `root`); undecodable files are skipped."""
    skipped: list[str] = []
    try:
        for path in files:
            relative = path.relative_to(root).as_posix()
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                skipped.append(relative)
                continue
            yield Document(relative, text)
    finally:
        if skipped:
            warnings.warn(f"{root}: skipped {len(skipped)} file(s) that are not valid UTF-8 "
                          f"(first: {skipped[0]})", stacklevel=2)


# --------------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------------


def _iter_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    if not path.is_file():
        raise DrafttrainError(f"corpus.path: JSONL file {path} does not exist. "
                              "Fix: point corpus.path at a file with one JSON object per line.")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield _jsonl_document(line, f"{path}:{number}", number, text_field)


def _jsonl_document(line: str, where: str, number: int, text_field: str) -> Document:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DrafttrainError(f"{where}: not valid JSON ({err}). "
                              "Fix: write one JSON object per line.") from err
    if not isinstance(record, dict):
        raise DrafttrainError(f"{where}: expected a JSON object, got {type(record).__name__}. "
                              f'Fix: write lines like {{"{text_field}": "..."}}.')
    text = record.get(text_field)
    if not isinstance(text, str):
        found = "missing" if text_field not in record else f"a {type(text).__name__}"
        raise DrafttrainError(f"{where}: field {text_field!r} is {found}, expected a string. "
                              f"Fix: give every line a string {text_field!r} field, or set "
                              f"corpus.text_field to the field that holds the text "
                              f"(this line has: {', '.join(sorted(record)) or 'no fields'}).")
    document_id = str(record["id"]) if "id" in record else str(number)
    return Document(document_id, text)
