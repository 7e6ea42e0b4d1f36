"""The manifest: one CSV row per input image saying what preprocessing made of it (status,
detector, box, landmarks, crop file or error), written as a journal so a killed run loses
at most the line it was writing, and the crop file names it records."""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from pathlib import Path

from utils.core.image_io import OUTPUT_FORMATS
from utils.core.run_io import atomic_write_bytes, safe_name_component
from utils.preprocess.datasets import ImageEntry

MANIFEST_NAME = "manifest.csv"
LANDMARK_COLUMNS = ["left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y",
                    "mouth_left_x", "mouth_left_y", "mouth_right_x", "mouth_right_y"]
MANIFEST_COLUMNS = (["path", "status", "detector", "faces", "x0", "y0", "x1", "y1"] + LANDMARK_COLUMNS
                    + ["width", "height", "output", "error"])
STATUSES = ("ok", "fallback", "error")


def output_names(entries: list[ImageEntry], fmt: str) -> dict[str, str]:
    """Relative output path per input: same tree, same stem, new extension. Two inputs
    that differ only by extension (a.jpg, a.png) keep their extension in the name. Names
    that could act as paths elsewhere are escaped (utils.core.run_io.safe_name_component)."""
    ext = OUTPUT_FORMATS[fmt]
    stems = Counter((e.identity, os.path.splitext(e.name)[0]) for e in entries)
    names = {}
    for e in entries:
        stem, old_ext = os.path.splitext(e.name)
        if stems[(e.identity, stem)] > 1:
            stem = f"{stem}_{old_ext.lstrip('.')}"
        names[e.relpath] = f"{safe_name_component(e.identity)}/{safe_name_component(stem)}{ext}"
    return names


def _open_text(path: Path, mode: str):
    # surrogateescape keeps file names that are not valid UTF-8 round-tripping exactly.
    return open(path, mode, encoding="utf-8", errors="surrogateescape", newline="")


def read_manifest(path: Path) -> dict[str, dict]:
    """Rows by input path; the last row for a path wins. A final line cut short by a
    killed run (no newline) is ignored."""
    path = Path(path)
    if not path.exists():
        return {}
    with _open_text(path, "r") as f:
        text = f.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = {}
    for row in csv.DictReader(io.StringIO(text)):
        if None in row or any(v is None for v in row.values()) or row.get("status") not in STATUSES:
            continue
        rows[row["path"]] = row
    return rows


def _format_rows(rows: list[dict], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_manifest(path: Path, rows: list[dict]):
    """The whole manifest at once, replacing any file there atomically."""
    atomic_write_bytes(path, _format_rows(rows, header=True).encode("utf-8", "surrogateescape"))


def tally(rows: list[dict]) -> tuple[dict, dict]:
    """(images per status, faces per detector) of manifest rows."""
    return ({s: sum(r["status"] == s for r in rows) for s in STATUSES},
            dict(Counter(r["detector"] for r in rows if r["detector"])))


class ManifestJournal:
    """Append-only manifest written one chunk at a time, so it survives kill -9."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows = read_manifest(self.path)
        if self.path.exists():
            # Drop a partial last line before appending after it.
            with open(self.path, "rb+") as f:
                data = f.read()
                keep = data.rfind(b"\n") + 1
                if keep != len(data):
                    f.truncate(keep)
            needs_header = keep == 0
        else:
            needs_header = True
        self._file = _open_text(self.path, "a")
        if needs_header:
            self._write(_format_rows([], header=True))

    def _write(self, text: str):
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, rows: list[dict]):
        self._write(_format_rows(rows, header=False))
        for row in rows:
            self.rows[row["path"]] = row

    def close(self):
        self._file.close()

    def finalize(self, paths_in_order: list[str]):
        """Rewrite sorted and de-duplicated, keeping rows of the current input only."""
        self.close()
        write_manifest(self.path, [self.rows[p] for p in paths_in_order if p in self.rows])
