"""The preprocessing stage: raw folder-per-identity photos -> aligned crops + manifest.

Identities are hashed into buckets, and each bucket's images (in discovery order) are cut
into fixed chunks. A chunk is the unit of work, of MTCNN batching and of resumption: a
rerun skips chunks whose images are all recorded and recomputes any other chunk whole, so
a resumed run feeds each detector exactly the batches an uninterrupted run would (MTCNN's
output for an image shifts slightly with its batch neighbours). A shard (--shard K/N) is a
set of buckets, so N machines make the same chunks, hence the same crops, as one machine;
--merge then checks the shards' manifests cover the input exactly once and joins them.
One run can write several crop sets (run_preprocess_sets: same detections, one folder,
manifest and preprocess.json per alignment), each as a run of that alignment alone would.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import multiprocessing
import os
import re
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from utils.datasets import DatasetError, ImageEntry, scan_dataset
from utils.face_alignment import AlignSettings
from utils.face_detection import (DEFAULT_CASCADE, DEFAULT_DETECT_MAX_SIDE, DEFAULT_HOG_UPSAMPLE, SELECT_RULES,
                                  CENTER_BOX_FRACTION)
from utils.image_io import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS
from utils.run_io import (atomic_write_bytes, git_revision, is_inside, package_versions, read_json,
                          remove_stale_temporaries, safe_name_component, write_json)

MANIFEST_NAME = "manifest.csv"
SETTINGS_NAME = "preprocess.json"
LANDMARK_COLUMNS = ["left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y",
                    "mouth_left_x", "mouth_left_y", "mouth_right_x", "mouth_right_y"]
MANIFEST_COLUMNS = (["path", "status", "detector", "faces", "x0", "y0", "x1", "y1"] + LANDMARK_COLUMNS
                    + ["width", "height", "output", "error"])
STATUSES = ("ok", "fallback", "error")
FALLBACK_DETECTOR = "center"
DEFAULT_BATCH_SIZE = 16  # MTCNN's per-image cost flattens out around 16 images a batch
VERSIONED_PACKAGES = ("numpy", "pillow", "opencv-python-headless", "dlib-bin", "mtcnn", "tensorflow",
                      "face_recognition_models")
CASIA_HELP = ("Expected layout: <input-dir>/<identity>/<image>, one folder per person "
              "(CASIA-WebFace: 10,575 folders, 494,414 JPEGs). CASIA-WebFace is distributed by its "
              "authors on request (Yi et al., 'Learning Face Representation from Scratch', 2014); "
              "unpack it to data/CASIA-WebFace or pass --input-dir.")


# Buckets of identities: about this many images each, so chunks rarely end short of a batch.
IMAGES_PER_BUCKET = 256
MIN_BUCKETS, MAX_BUCKETS = 16, 4096


class PreprocessError(Exception):
    """A problem with the run as a whole (not one image): reported to the user, exit non-zero."""


@dataclass(frozen=True)
class Shard:
    """Part `index` of `count` (1-based) of a dataset split by identity."""

    index: int
    count: int

    def __post_init__(self):
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 1 <= K <= N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            index, count = (int(v) for v in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard takes K/N (e.g. 2/8), got {text!r}") from None
        return cls(index, count)

    @property
    def tag(self) -> str:
        return f"{self.index}-of-{self.count}"

    def holds(self, bucket: int) -> bool:
        return bucket % self.count == self.index - 1


def manifest_name(shard: Shard | None = None) -> str:
    return MANIFEST_NAME if shard is None else f"manifest-{shard.tag}.csv"


def settings_name(shard: Shard | None = None) -> str:
    return SETTINGS_NAME if shard is None else f"preprocess-{shard.tag}.json"


def bucket_count(n_images: int) -> int:
    """Depends on the whole input only, so every shard and the unsharded run agree."""
    return min(MAX_BUCKETS, max(MIN_BUCKETS, n_images // IMAGES_PER_BUCKET))


def identity_bucket(identity: str, buckets: int) -> int:
    digest = hashlib.sha1(identity.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def plan_chunks(entries: list[ImageEntry], batch_size: int, shard: Shard | None = None) -> list[list[ImageEntry]]:
    """The chunks of work, bucket by bucket; a shard's chunks are exactly the unsharded
    run's chunks of its buckets."""
    buckets = bucket_count(len(entries))
    by_bucket: dict[int, list[ImageEntry]] = {}
    bucket_of: dict[str, int] = {}
    for e in entries:
        if e.identity not in bucket_of:
            bucket_of[e.identity] = identity_bucket(e.identity, buckets)
        by_bucket.setdefault(bucket_of[e.identity], []).append(e)
    return [members[i:i + batch_size] for b, members in sorted(by_bucket.items())
            if shard is None or shard.holds(b) for i in range(0, len(members), batch_size)]


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that decides what a crop looks like. Saved to preprocess.json; a rerun
    into the same folder must use the same settings, and later stages read them."""

    align: AlignSettings = field(default_factory=AlignSettings)
    detectors: tuple[str, ...] = DEFAULT_CASCADE
    hog_upsample: int = DEFAULT_HOG_UPSAMPLE
    select: str = "largest"
    detect_max_side: int = DEFAULT_DETECT_MAX_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS
    output_format: str = "png"
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self):
        if self.select not in SELECT_RULES:
            raise ValueError(f"unknown face selection {self.select!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {self.output_format!r}; choose from {', '.join(OUTPUT_FORMATS)}")
        if self.batch_size < 1 or self.hog_upsample < 0 or self.detect_max_side < 32 or self.max_pixels < 1:
            raise ValueError("batch size >= 1, hog upsample >= 0, detect max side >= 32 and max pixels >= 1 required")

    def to_dict(self) -> dict:
        return {"align": self.align.to_dict(), "detectors": list(self.detectors), "hog_upsample": self.hog_upsample,
                "select": self.select, "detect_max_side": self.detect_max_side, "max_pixels": self.max_pixels,
                "output_format": self.output_format, "batch_size": self.batch_size,
                "center_box_fraction": CENTER_BOX_FRACTION}

    def make_cascade(self, seed_points: bool | None = None):
        """The detection cascade these settings describe (loads the detectors' models);
        seed_points defaults to whether this alignment needs them."""
        from utils.face_detection import FaceCascade

        return FaceCascade(self.detectors, self.hog_upsample, self.select, self.detect_max_side,
                           seed_points=self.align.needs_seed_points if seed_points is None else seed_points)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSettings":
        return cls(align=AlignSettings.from_dict(d["align"]), detectors=tuple(d["detectors"]),
                   hog_upsample=int(d["hog_upsample"]), select=d["select"], detect_max_side=int(d["detect_max_side"]),
                   max_pixels=int(d["max_pixels"]), output_format=d["output_format"], batch_size=int(d["batch_size"]))


def default_output_dir(input_dir: Path, align: AlignSettings, data_root: Path = Path("data")) -> Path:
    """data/<input name>-<mode>-<size>[-m<margin>][-s<scale>] (mode 'part<k>' for parts), so
    different settings never share a folder."""
    mode = f"part{align.part}" if align.mode == "part" else align.mode
    tag = f"{mode}-{align.image_size}"
    if align.mode in ("margin", "part"):
        tag += f"-m{align.margin:g}"
    if align.mode == "affine" and align.needs_seed_points:
        tag += f"-s{align.scale:g}"
    return data_root / f"{Path(input_dir).resolve().name}-{tag}"


def output_names(entries: list[ImageEntry], fmt: str) -> dict[str, str]:
    """Relative output path per input: same tree, same stem, new extension. Two inputs
    that differ only by extension (a.jpg, a.png) keep their extension in the name. Names
    that could act as paths elsewhere are escaped (utils.run_io.safe_name_component)."""
    ext = OUTPUT_FORMATS[fmt]
    stems = Counter((e.identity, os.path.splitext(e.name)[0]) for e in entries)
    names = {}
    for e in entries:
        stem, old_ext = os.path.splitext(e.name)
        if stems[(e.identity, stem)] > 1:
            stem = f"{stem}_{old_ext.lstrip('.')}"
        names[e.relpath] = f"{safe_name_component(e.identity)}/{safe_name_component(stem)}{ext}"
    return names


# ---------------------------------------------------------------- manifest journal

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
        rows = [self.rows[p] for p in paths_in_order if p in self.rows]
        atomic_write_bytes(self.path, _format_rows(rows, header=True).encode("utf-8", "surrogateescape"))


# ---------------------------------------------------------------- worker side

_worker = {}


def _init_worker(targets: list[tuple[dict, str]], input_dir: str, threads: int):
    """targets: (settings dict, output dir) per crop set; the settings differ only in align."""
    started = time.time()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # MTCNN runs on the CPU here; without this each of N workers would claim every GPU's memory.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import cv2

    cv2.setNumThreads(1)
    sets = [(PreprocessSettings.from_dict(d), Path(out)) for d, out in targets]
    settings = sets[0][0]
    if "mtcnn" in settings.detectors:
        with _quiet_native_stderr():  # TF's C++ start-up banners would garble the progress bar
            import tensorflow as tf
        # N workers share the cores: one TF pool per worker sized to its share.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    with _quiet_native_stderr():
        cascade = settings.make_cascade(seed_points=any(s.align.needs_seed_points for s, _ in sets))
    _worker.update(settings=settings, targets=[(s.align, out) for s, out in sets], input_dir=Path(input_dir),
                   cascade=cascade, startup_s=time.time() - started)


@contextlib.contextmanager
def _quiet_native_stderr():
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _round(v) -> str:
    return f"{float(v):.2f}"


def process_chunk(chunk: list[tuple[str, str, str]]) -> tuple[list[list[dict]], dict]:
    """Detect, align and write the crops of one chunk of (input path, output path,
    known problem), detecting once for all targets. Returns the manifest rows of each
    target and this worker's stats (peak RSS in KiB, seconds it took to start)."""
    from utils.face_alignment import align_face
    from utils.image_io import ImageReadError, load_rgb, save_rgb

    settings: PreprocessSettings = _worker["settings"]
    rows, images, image_rows = [], [], []
    for relpath, outrel, problem in chunk:
        row = dict.fromkeys(MANIFEST_COLUMNS, "")
        row.update(path=relpath, status="error")
        rows.append(row)
        if problem:
            row["error"] = problem
            continue
        try:
            image = load_rgb(_worker["input_dir"] / relpath, settings.max_pixels)
        except ImageReadError as err:
            row["error"] = str(err).replace("\n", " ")
            continue
        row.update(width=image.shape[1], height=image.shape[0])
        images.append(image)
        image_rows.append((len(rows) - 1, outrel))
    detections = _worker["cascade"].detect(images) if images else []
    for (i, _), det in zip(image_rows, detections):
        if det is None:
            rows[i]["error"] = "no face found and no fallback detector in --detectors"
    per_target = []
    for align, output_dir in _worker["targets"]:
        target_rows = [dict(row) for row in rows]
        per_target.append(target_rows)
        for image, (i, outrel), det in zip(images, image_rows, detections):
            if det is None:
                continue
            row = target_rows[i]
            crop = align_face(image, det.face.box, det.face.landmarks, align, det.face.seed_points)
            out_path = output_dir / outrel
            out_path.parent.mkdir(parents=True, exist_ok=True)
            if not is_inside(out_path.parent, output_dir):
                # A link planted in the output tree must not carry crops elsewhere.
                row["error"] = "output folder is a link leaving the output directory (not written)"
                continue
            save_rgb(out_path, crop, settings.output_format)  # OSError (disk full...) stops the run
            row.update(status="fallback" if det.detector == FALLBACK_DETECTOR else "ok", detector=det.detector,
                       faces=det.n_faces, output=outrel)
            row.update(zip(["x0", "y0", "x1", "y1"], map(_round, det.face.box)))
            row.update(zip(LANDMARK_COLUMNS, map(_round, det.face.landmarks.ravel())))
    return per_target, {"rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                        "startup_s": _worker["startup_s"]}


# ---------------------------------------------------------------- driver

@dataclass
class PreprocessSummary:
    images: int
    counts: dict
    per_detector: dict
    ignored: int
    skipped: int
    processed: int
    elapsed_s: float
    workers: int
    worker_startup_s: float  # loading TensorFlow and the detectors, included in elapsed_s
    peak_rss_mb_per_worker: float | None
    output_dir: str

    @property
    def images_per_s(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def fallback_rate(self) -> float:
        found = self.counts.get("ok", 0) + self.counts.get("fallback", 0)
        return self.counts.get("fallback", 0) / found if found else 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(images_per_s=round(self.images_per_s, 2), fallback_rate=round(self.fallback_rate, 4))
        return d

    def report(self) -> str:
        det = ", ".join(f"{k} {v}" for k, v in sorted(self.per_detector.items())) or "none"
        rss = f"{self.peak_rss_mb_per_worker:.0f} MB" if self.peak_rss_mb_per_worker else "n/a"
        if self.processed:
            speed = (f"{self.elapsed_s:.1f} s ({self.worker_startup_s:.1f} s worker start-up), "
                     f"{self.images_per_s:.1f} images/s with {self.workers} worker(s), peak RSS per worker {rss}")
        else:
            speed = f"{self.elapsed_s:.1f} s, nothing left to do"
        return "\n".join([
            f"images      {self.images} ({self.skipped} already done, {self.processed} processed now)",
            f"ok          {self.counts.get('ok', 0)}",
            f"fallback    {self.counts.get('fallback', 0)} ({self.fallback_rate:.1%} of faces)",
            f"errors      {self.counts.get('error', 0)} (reasons in {MANIFEST_NAME})",
            f"detectors   {det}",
            f"ignored     {self.ignored} non-image entries",
            f"elapsed     {speed}",
            f"output      {self.output_dir}",
        ])


def _check_existing_settings(settings_path: Path, settings: PreprocessSettings, input_dir: Path):
    if not settings_path.exists():
        return
    output_dir = settings_path.parent
    previous = read_json(settings_path)
    if previous.get("settings") != settings.to_dict():
        raise PreprocessError(
            f"{output_dir} holds crops made with other settings ({settings_path.name}):\n"
            f"  there: {previous.get('settings')}\n  now:   {settings.to_dict()}\nChoose another --output-dir "
            f"(the default is named after the settings) or delete that folder.")
    if previous.get("input_dir") and Path(previous["input_dir"]) != input_dir:
        raise PreprocessError(f"{output_dir} holds crops of {previous['input_dir']}, not {input_dir}; "
                              f"choose another --output-dir")


def _is_done(row: dict, output_dir: Path) -> bool:
    return row["status"] == "error" or (output_dir / row["output"]).is_file()


def _scan_input(input_dir: Path):
    try:
        scan = scan_dataset(input_dir)
    except DatasetError as err:
        raise PreprocessError(f"{err}\n{CASIA_HELP}") from None
    if not scan.entries:
        raise PreprocessError(f"no images found in {input_dir}\n{CASIA_HELP}")
    return scan


def _tally(rows: list[dict]) -> tuple[dict, dict]:
    """(images per status, faces per detector) of manifest rows."""
    return ({s: sum(r["status"] == s for r in rows) for s in STATUSES},
            dict(Counter(r["detector"] for r in rows if r["detector"])))


def run_preprocess(input_dir: Path, output_dir: Path, settings: PreprocessSettings, workers: int = 1,
                   progress: bool = True, threads_per_worker: int | None = None,
                   shard: Shard | None = None) -> PreprocessSummary:
    """Preprocess input_dir (or one shard of its identities) into output_dir, resuming what a
    previous run left. A shard writes only its identities' folders, manifest-K-of-N.csv and
    preprocess-K-of-N.json, so N shards can share one output tree; merge_shards joins them.

    threads_per_worker defaults to the cores divided among the workers."""
    return run_preprocess_sets(input_dir, [(output_dir, settings)], workers, progress, threads_per_worker, shard)[0]


def _check_targets(targets: list[tuple[Path, PreprocessSettings]], input_dir: Path):
    detection = {json.dumps({**s.to_dict(), "align": None}, sort_keys=True) for _, s in targets}
    if len(detection) > 1:
        raise PreprocessError("crop sets made in one run share every setting but the alignment")
    dirs = [d for d, _ in targets]
    for d in dirs:
        if d == input_dir or input_dir in d.parents:
            raise PreprocessError(f"--output-dir {d} is inside --input-dir {input_dir}; crops would mix with the photos")
        if any(d == o or d in o.parents for o in dirs if o is not d):
            raise PreprocessError(f"two crop sets would share {d}; give each its own folder")


def run_preprocess_sets(input_dir: Path, targets: list[tuple[Path, PreprocessSettings]], workers: int = 1,
                        progress: bool = True, threads_per_worker: int | None = None,
                        shard: Shard | None = None) -> list[PreprocessSummary]:
    """run_preprocess for several (output_dir, settings) that differ only in alignment: each
    image is read and detected once, and each folder gets the crops, manifest and settings a
    run of its alignment alone would write. A chunk is redone (in every folder) unless it is
    finished in all of them."""
    from tqdm import tqdm

    start = time.time()
    input_dir = Path(input_dir).resolve()
    targets = [(Path(d).resolve(), s) for d, s in targets]
    scan = _scan_input(input_dir)
    _check_targets(targets, input_dir)
    settings = targets[0][1]
    for output_dir, target_settings in targets:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(output_dir, os.W_OK):
            raise PreprocessError(f"output folder {output_dir} is not writable")
        for name in dict.fromkeys([SETTINGS_NAME, settings_name(shard)]):
            _check_existing_settings(output_dir / name, target_settings, input_dir)

    chunks = plan_chunks(scan.entries, settings.batch_size, shard)
    mine = {e.relpath for chunk in chunks for e in chunk}
    entries = [e for e in scan.entries if e.relpath in mine]  # input order, for the manifest
    names = output_names(scan.entries, settings.output_format)
    for output_dir, _ in targets:
        if shard is None:
            remove_stale_temporaries(output_dir)
        else:  # other shards may be writing elsewhere in this tree right now
            for folder in sorted({names[e.relpath].split("/", 1)[0] for e in entries}):
                if (output_dir / folder).is_dir():
                    remove_stale_temporaries(output_dir / folder)

    journals = [ManifestJournal(output_dir / manifest_name(shard)) for output_dir, _ in targets]
    done = [{path for path, row in journal.rows.items() if path in mine and _is_done(row, output_dir)}
            for journal, (output_dir, _) in zip(journals, targets)]
    todo = []
    status = [Counter() for _ in targets]  # counts of finished chunks, for the progress bar
    for chunk in chunks:
        if all(e.relpath in d for d in done for e in chunk):
            for counter, journal in zip(status, journals):
                counter.update(journal.rows[e.relpath]["status"] for e in chunk)
        else:
            todo.append([(e.relpath, names[e.relpath], e.problem) for e in chunk])
    skipped = sum(status[0].values())

    records = []
    for output_dir, target_settings in targets:
        record = {"input_dir": str(input_dir), "settings": target_settings.to_dict(), "status": "running",
                  "versions": package_versions(VERSIONED_PACKAGES), "code_revision": git_revision()}
        if shard is not None:
            record["shard"] = {"index": shard.index, "count": shard.count, "buckets": bucket_count(len(scan.entries))}
        write_json(output_dir / settings_name(shard), record)
        records.append(record)

    workers = max(1, min(workers, len(todo)))
    threads = threads_per_worker or max(1, len(os.sched_getaffinity(0)) // workers)
    peak_rss_kib, startup_s = 0, 0.0
    bar = tqdm(total=len(entries), initial=skipped, unit="img", disable=not progress, smoothing=0.1,
               dynamic_ncols=True)
    try:
        if todo:
            ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
            initargs = ([(s.to_dict(), str(d)) for d, s in targets], str(input_dir), threads)
            with ctx.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
                for per_target, stats in pool.imap_unordered(process_chunk, todo):
                    for journal, counter, rows in zip(journals, status, per_target):
                        journal.append(rows)
                        counter.update(r["status"] for r in rows)
                    peak_rss_kib = max(peak_rss_kib, stats["rss_kib"])
                    startup_s = max(startup_s, stats["startup_s"])
                    found = status[0]["ok"] + status[0]["fallback"]
                    bar.set_postfix(fallback=f"{status[0]['fallback'] / max(found, 1):.1%}",
                                    errors=status[0]["error"], refresh=False)
                    bar.update(len(per_target[0]))
    finally:
        bar.close()
        for journal in journals:
            journal.close()
    summaries = []
    for journal, record, (output_dir, _) in zip(journals, records, targets):
        journal.finalize([e.relpath for e in entries])
        counts, per_detector = _tally([journal.rows[e.relpath] for e in entries])
        summary = PreprocessSummary(
            images=len(entries), counts=counts, per_detector=per_detector, ignored=len(scan.ignored),
            skipped=skipped, processed=len(entries) - skipped, elapsed_s=round(time.time() - start, 2),
            workers=workers if todo else 0, worker_startup_s=round(startup_s, 2),
            peak_rss_mb_per_worker=round(peak_rss_kib / 1024, 1) if peak_rss_kib else None,
            output_dir=str(output_dir))
        record.update(status="complete", summary=summary.to_dict(), identities=len({e.identity for e in entries}),
                      ignored_entries=scan.ignored[:1000])
        write_json(output_dir / settings_name(shard), record)
        summaries.append(summary)
    return summaries


# ---------------------------------------------------------------- merging shards

@dataclass
class MergeSummary:
    shards: int
    images: int
    identities: int
    counts: dict
    per_detector: dict
    ignored: int
    output_dir: str

    def report(self) -> str:
        det = ", ".join(f"{k} {v}" for k, v in sorted(self.per_detector.items())) or "none"
        return "\n".join([
            f"merged      {self.shards} shards: every input image is in exactly one shard manifest",
            f"images      {self.images} of {self.identities} identities",
            f"ok          {self.counts.get('ok', 0)}",
            f"fallback    {self.counts.get('fallback', 0)}",
            f"errors      {self.counts.get('error', 0)} (reasons in {MANIFEST_NAME})",
            f"detectors   {det}",
            f"ignored     {self.ignored} non-image entries",
            f"output      {self.output_dir}",
        ])


_SHARD_SETTINGS = re.compile(r"preprocess-(\d+)-of-(\d+)\.json")  # settings_name(Shard(K, N))


def shard_settings_files(output_dir: Path) -> dict[tuple[int, int], Path]:
    """The shards' settings files in output_dir, by (K, N)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return {}
    found = {}
    for path in sorted(output_dir.iterdir()):
        match = _SHARD_SETTINGS.fullmatch(path.name)
        if match:
            found[int(match[1]), int(match[2])] = path
    return found


def _examples(paths) -> str:
    paths = sorted(paths)
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def merge_shards(input_dir: Path, output_dir: Path) -> MergeSummary:
    """Check that the shards in output_dir cover every image of input_dir exactly once, with
    one set of settings and every crop present, then write manifest.csv and preprocess.json.
    Nothing is written unless every check passes."""
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    records = {key: read_json(path) for key, path in shard_settings_files(output_dir).items()}
    if not records:
        raise PreprocessError(f"no shard outputs (preprocess-K-of-N.json) in {output_dir}: run "
                              f"preprocess_data.py --shard K/N for every K first")
    splits = sorted({n for _, n in records})
    if len(splits) > 1:
        raise PreprocessError(f"{output_dir} holds shards of different splits (N = {splits}); "
                              f"delete the shard files of the split you abandoned")
    n = splits[0]
    missing = [k for k in range(1, n + 1) if (k, n) not in records]
    if missing:
        raise PreprocessError(f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} have not run "
                              f"(no {settings_name(Shard(missing[0], n))}); run them, then --merge again")
    unfinished = [k for (k, _), r in sorted(records.items()) if r.get("status") != "complete"]
    if unfinished:
        raise PreprocessError(f"shard(s) {', '.join(f'{k}/{n}' for k in unfinished)} did not finish; "
                              f"rerun the same --shard command to resume them, then --merge again")
    if len({json.dumps(r["settings"], sort_keys=True) for r in records.values()}) > 1:
        raise PreprocessError(f"the shards in {output_dir} were made with different settings; rerun them alike")
    sources = {r["input_dir"] for r in records.values()}
    if sources != {str(input_dir)}:
        raise PreprocessError(f"the shards were made from {', '.join(sorted(sources))}, not {input_dir}; "
                              f"pass the same --input-dir")
    settings = PreprocessSettings.from_dict(next(iter(records.values()))["settings"])
    _check_existing_settings(output_dir / SETTINGS_NAME, settings, input_dir)

    scan = _scan_input(input_dir)
    if any(r["shard"]["buckets"] != bucket_count(len(scan.entries)) for r in records.values()):
        raise PreprocessError(f"{input_dir} changed since the shards ran (now {len(scan.entries)} images, so a "
                              f"different split); rerun every shard")
    rows, owner, repeated = {}, {}, []
    for k in range(1, n + 1):
        for path, row in read_manifest(output_dir / manifest_name(Shard(k, n))).items():
            if path in owner:
                repeated.append(path)
            owner[path], rows[path] = k, row
    inputs = [e.relpath for e in scan.entries]
    absent = [p for p in inputs if p not in owner]
    stale = set(owner) - set(inputs)
    problems = []
    if absent:
        problems.append(f"{len(absent)} input images are in no shard manifest ({_examples(absent)})")
    if repeated:
        problems.append(f"{len(repeated)} images are in more than one shard manifest ({_examples(repeated)})")
    if stale:
        problems.append(f"{len(stale)} manifest rows name files no longer in the input ({_examples(stale)})")
    lost = [p for p in inputs if p in rows and rows[p]["status"] != "error"
            and not (output_dir / rows[p]["output"]).is_file()]
    if lost:
        problems.append(f"{len(lost)} crops listed in shard manifests are missing ({_examples(lost)}); rerun "
                        f"shard(s) {', '.join(f'{k}/{n}' for k in sorted({owner[p] for p in lost}))}")
    if problems:
        raise PreprocessError("cannot merge:\n  " + "\n  ".join(problems) + "\nNothing was written.")

    remove_stale_temporaries(output_dir, recursive=False)  # identity folders belong to the shards' reruns
    ordered = [rows[p] for p in inputs]
    atomic_write_bytes(output_dir / MANIFEST_NAME, _format_rows(ordered, header=True).encode("utf-8", "surrogateescape"))
    counts, per_detector = _tally(ordered)
    summary = MergeSummary(shards=n, images=len(inputs), identities=len(scan.identities), counts=counts,
                           per_detector=per_detector, ignored=len(scan.ignored), output_dir=str(output_dir))
    write_json(output_dir / SETTINGS_NAME, {
        "input_dir": str(input_dir), "settings": settings.to_dict(), "status": "complete",
        "versions": package_versions(VERSIONED_PACKAGES), "code_revision": git_revision(),
        "summary": dict(summary.__dict__), "shards": [records[k, n]["summary"] for k in range(1, n + 1)],
        "identities": len(scan.identities), "ignored_entries": scan.ignored[:1000]})
    return summary
