"""The preprocessing stage: raw folder-per-identity photos -> aligned crops + manifest.

The input is cut into chunks (utils.preprocess.shards: identities hashed into buckets, each bucket's
images in fixed chunks). A chunk is the unit of work, of MTCNN batching and of resumption: a
rerun skips chunks whose images are all recorded and recomputes any other chunk whole, so
a resumed run feeds each detector exactly the batches an uninterrupted run would (MTCNN's
output for an image shifts slightly with its batch neighbours). A shard (--shard K/N) is a
set of buckets, so N machines make the same chunks, hence the same crops, as one machine;
utils.preprocess.shards.merge_shards then joins them.
One run can write several crop sets (run_preprocess_sets: same detections, one folder,
manifest and preprocess.json per alignment), each as a run of that alignment alone would.

Settings and run-wide checks live in utils.preprocess.settings, the manifest journal in
utils.preprocess.manifest.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import resource
import signal
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from utils.core.folder_lock import FolderBusyError, hold_folder
from utils.core.run_io import is_inside, remove_stale_temporaries, write_json
from utils.core.startup import configure_tf_logging, quiet_native_stderr
from utils.core.stop_requests import StopRequested, stop_requests
from utils.preprocess.datasets import ImageEntry
from utils.preprocess.manifest import (
    LANDMARK_COLUMNS,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    ManifestJournal,
    output_names,
    tally,
)
from utils.preprocess.settings import (
    SETTINGS_NAME,
    PreprocessError,
    PreprocessSettings,
    check_existing_settings,
    run_record,
    scan_input,
)
from utils.preprocess.shards import Shard, bucket_count, lock_name, manifest_name, plan_chunks, settings_name

FALLBACK_DETECTOR = "center"


# ---------------------------------------------------------------- worker side

_worker = {}


def _init_worker(targets: list[tuple[dict, str]], input_dir: str, threads: int):
    """targets: (settings dict, output dir) per crop set; the settings differ only in align."""
    started = time.time()
    # Ctrl-C reaches the whole terminal group: the main process decides what it stops
    # (utils.core.stop_requests). SIGTERM keeps its default, as _terminate() sends it to the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_tf_logging([])
    # MTCNN runs on the CPU here; without this each of N workers would claim every GPU's memory.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import cv2

    cv2.setNumThreads(1)
    sets = [(PreprocessSettings.from_dict(d), Path(out)) for d, out in targets]
    settings = sets[0][0]
    if "mtcnn" in settings.detectors:
        with quiet_native_stderr():  # TF's C++ start-up banners would garble the progress bar
            import tensorflow as tf
        # N workers share the cores: one TF pool per worker sized to its share.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    with quiet_native_stderr():
        cascade = settings.make_cascade(seed_points=any(s.align.needs_seed_points for s, _ in sets))
    _worker.update(settings=settings, targets=[(s.align, out) for s, out in sets], input_dir=Path(input_dir),
                   cascade=cascade, startup_s=time.time() - started)


def _round(v) -> str:
    return f"{float(v):.2f}"


def process_chunk(chunk: list[tuple[str, str, str]]) -> tuple[list[list[dict]], dict]:
    """Detect, align and write the crops of one chunk of (input path, output path,
    known problem), detecting once for all targets. Returns the manifest rows of each
    target and this worker's stats (peak RSS in KiB, seconds it took to start)."""
    from utils.core.image_io import ImageReadError, load_rgb, save_rgb
    from utils.preprocess.face_alignment import align_face

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


def _is_done(row: dict, output_dir: Path) -> bool:
    return row["status"] == "error" or (output_dir / row["output"]).is_file()


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
            raise PreprocessError(f"--output-dir {d} is inside --input-dir {input_dir}; crops would mix with the "
                                  f"photos")
        if any(d == o or d in o.parents for o in dirs if o is not d):
            raise PreprocessError(f"two crop sets would share {d}; give each its own folder")


def _prepare_output_dirs(targets: list[tuple[Path, PreprocessSettings]], input_dir: Path, shard: Shard | None):
    """Create each output folder; refuse one that is read-only or holds other settings."""
    for output_dir, target_settings in targets:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(output_dir, os.W_OK):
            raise PreprocessError(f"output folder {output_dir} is not writable")
        for name in dict.fromkeys([SETTINGS_NAME, settings_name(shard)]):
            check_existing_settings(output_dir / name, target_settings, input_dir)


def _remove_stale(output_dirs: list[Path], folders: set[str], shard: Shard | None):
    """Temporaries a killed run left: the whole tree, or a shard's own identity folders only."""
    for output_dir in output_dirs:
        if shard is None:
            remove_stale_temporaries(output_dir)
        else:  # other shards may be writing elsewhere in this tree right now
            for folder in sorted(folders):
                if (output_dir / folder).is_dir():
                    remove_stale_temporaries(output_dir / folder)


def _plan_work(chunks: list[list[ImageEntry]], names: dict[str, str], journals: list[ManifestJournal],
               output_dirs: list[Path]) -> tuple[list[list[tuple[str, str, str]]], list[Counter]]:
    """The chunks left to do, as process_chunk takes them, and per target the statuses of
    the finished chunks' images. A chunk counts as finished only if it is in every target."""
    done = [{path for path, row in journal.rows.items() if _is_done(row, output_dir)}
            for journal, output_dir in zip(journals, output_dirs)]
    todo = []
    status = [Counter() for _ in journals]  # counts of finished chunks, for the progress bar
    for chunk in chunks:
        if all(e.relpath in d for d in done for e in chunk):
            for counter, journal in zip(status, journals):
                counter.update(journal.rows[e.relpath]["status"] for e in chunk)
        else:
            todo.append([(e.relpath, names[e.relpath], e.problem) for e in chunk])
    return todo, status


def _start_record(output_dir: Path, input_dir: Path, settings: PreprocessSettings, shard: Shard | None,
                  n_inputs: int) -> dict:
    """Write the settings file of a run in progress (a shard's also records its split)."""
    record = run_record(input_dir, settings, "running")
    if shard is not None:
        record["shard"] = {"index": shard.index, "count": shard.count, "buckets": bucket_count(n_inputs)}
    write_json(output_dir / settings_name(shard), record)
    return record


def _run_chunks(todo: list, targets: list[tuple[Path, PreprocessSettings]], input_dir: Path, workers: int,
                threads: int, journals: list[ManifestJournal], status: list[Counter], bar) -> tuple[int, float]:
    """Process the chunks in a pool, journaling each chunk's rows as it arrives; returns the
    largest worker peak RSS (KiB) and start-up time (s). A worker that dies (the kernel's OOM
    killer, say) is a PreprocessError, not a hang: a multiprocessing.Pool would wait forever for
    the chunk it held, an executor marks itself broken."""
    peak_rss_kib, startup_s = 0, 0.0
    ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    initargs = ([(s.to_dict(), str(d)) for d, s in targets], str(input_dir), threads)
    others = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=initargs)
    processes = []  # kept here: once broken, the executor forgets its processes, and with them how one died
    try:
        with stop_requests() as stop:
            pending = {pool.submit(process_chunk, chunk) for chunk in todo}
            # The pool's workers, started by now (one per worker, or per chunk if fewer): this process's
            # children that were not there before it.
            processes = [p for p in multiprocessing.active_children() if p not in others]
            while pending:
                if stop.requested:  # the workers are terminated below: chunks in flight are redone on rerun
                    raise _stopped(stop, status, bar)
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)  # a stop waits <= 0.5 s
                for future in finished:
                    try:
                        per_target, stats = future.result()
                    except BrokenProcessPool:
                        if stop.requested:  # a SIGTERM to the process group ends the workers too
                            raise _stopped(stop, status, bar) from None
                        raise PreprocessError(_worker_death(processes, sum(status[0].values()), bar.total,
                                                            workers)) from None
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
        _terminate(pool, processes)
    return peak_rss_kib, startup_s


def _stopped(stop, status: list[Counter], bar) -> StopRequested:
    return StopRequested(f"stopped by {stop.signal_name}: {sum(status[0].values())} of {bar.total} images are done, "
                         f"the chunks in progress were dropped")


def _worker_death(processes: list, done: int, total: int, workers: int) -> str:
    """What to tell the user when a worker died: how, what is kept, and what to change."""
    for process in processes:
        process.join(timeout=5)  # the executor has SIGTERMed the survivors; the first to die is the story
    codes = [p.exitcode for p in processes if p.exitcode not in (None, 0, -signal.SIGTERM)]
    how = next((f"killed by {signal.Signals(-c).name}" for c in codes if c < 0 and -c in signal.valid_signals()),
               f"exit code {codes[0]}" if codes else "it ended abruptly")
    advice = f"rerun with --workers {workers - 1}" if workers > 1 else "free some memory and rerun"
    return (f"a preprocessing worker died ({how}; SIGKILL is usually the kernel's out-of-memory killer: each worker "
            f"holds TensorFlow and its own detectors, 1-1.5 GB): {done} of {total} images are done and kept, "
            f"the chunks in progress were dropped; {advice} to resume")


def _terminate(pool: ProcessPoolExecutor, processes: list):
    """Stop the pool now, as Pool.terminate() did: queued chunks are cancelled and running workers
    get SIGTERM (Python 3.11's executor has no terminate_workers(), so the workers found by
    multiprocessing.active_children() are)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=30)


def run_preprocess_sets(input_dir: Path, targets: list[tuple[Path, PreprocessSettings]], workers: int = 1,
                        progress: bool = True, threads_per_worker: int | None = None,
                        shard: Shard | None = None) -> list[PreprocessSummary]:
    """run_preprocess for several (output_dir, settings) that differ only in alignment: each
    image is read and detected once, and each folder gets the crops, manifest and settings a
    run of its alignment alone would write. A chunk is redone (in every folder) unless it is
    finished in all of them."""
    start = time.time()
    input_dir = Path(input_dir).resolve()
    targets = [(Path(d).resolve(), s) for d, s in targets]
    output_dirs = [d for d, _ in targets]
    scan = scan_input(input_dir)
    _check_targets(targets, input_dir)
    _prepare_output_dirs(targets, input_dir, shard)

    try:
        with contextlib.ExitStack() as held:  # one process per folder (or shard of it); a second is refused
            for output_dir in output_dirs:
                held.enter_context(hold_folder(output_dir, lock_name(shard)))
            return _preprocess_held(input_dir, targets, scan, workers, progress, threads_per_worker, shard, start)
    except FolderBusyError as err:
        raise PreprocessError(f"output folder {err}") from None


def _preprocess_held(input_dir: Path, targets: list[tuple[Path, PreprocessSettings]], scan, workers: int,
                     progress: bool, threads_per_worker: int | None, shard: Shard | None,
                     start: float) -> list[PreprocessSummary]:
    """run_preprocess_sets' work, once its output folders are held."""
    from tqdm import tqdm

    output_dirs = [d for d, _ in targets]
    settings = targets[0][1]
    chunks = plan_chunks(scan.entries, settings.batch_size, shard)
    mine = {e.relpath for chunk in chunks for e in chunk}
    entries = [e for e in scan.entries if e.relpath in mine]  # input order, for the manifest
    names = output_names(scan.entries, settings.output_format)
    _remove_stale(output_dirs, {names[e.relpath].split("/", 1)[0] for e in entries}, shard)
    journals = [ManifestJournal(output_dir / manifest_name(shard)) for output_dir in output_dirs]
    todo, status = _plan_work(chunks, names, journals, output_dirs)
    skipped = sum(status[0].values())
    records = [_start_record(d, input_dir, s, shard, len(scan.entries)) for d, s in targets]

    workers = max(1, min(workers, len(todo)))
    threads = threads_per_worker or max(1, len(os.sched_getaffinity(0)) // workers)
    peak_rss_kib, startup_s = 0, 0.0
    bar = tqdm(total=len(entries), initial=skipped, unit="img", disable=not progress, smoothing=0.1,
               dynamic_ncols=True)
    try:
        if todo:
            peak_rss_kib, startup_s = _run_chunks(todo, targets, input_dir, workers, threads, journals, status, bar)
    finally:
        bar.close()
        for journal in journals:
            journal.close()
    summaries = []
    for journal, record, output_dir in zip(journals, records, output_dirs):
        journal.finalize([e.relpath for e in entries])
        counts, per_detector = tally([journal.rows[e.relpath] for e in entries])
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


def pack_crops(crops_dir: Path, pack_dir: Path, progress: bool = True):
    """Pack a finished crops folder as an insightface pack (train.rec, train.idx, property) in
    pack_dir, with the crops' preprocess.json (training and validation read the alignment from it)
    and identities.txt (label -> identity folder). The crops' bytes are stored as they are."""
    from utils.core.recordio import write_pack
    from utils.core.run_io import atomic_write_bytes, read_json
    from utils.preprocess.input_pipeline import list_crops

    crops_dir, pack_dir = Path(crops_dir), Path(pack_dir)
    settings_path = crops_dir / SETTINGS_NAME
    record = read_json(settings_path) if settings_path.exists() else {}
    if record.get("status") != "complete":
        raise PreprocessError(f"{crops_dir} is not a finished crops folder ({SETTINGS_NAME} missing or its run "
                              f"incomplete): finish preprocessing it before packing")
    if is_inside(pack_dir, crops_dir):
        raise PreprocessError(f"the pack {pack_dir} cannot go inside the crops folder {crops_dir}: it would be "
                              f"read back as an identity")
    files = list_crops(crops_dir)
    size = PreprocessSettings.from_dict(record["settings"]).align.crop_size
    prop = write_pack(files.paths, files.labels, len(files.classes), pack_dir, (size, size), progress=progress)
    atomic_write_bytes(pack_dir / "identities.txt", "".join(f"{name}\n" for name in files.classes).encode())
    write_json(pack_dir / SETTINGS_NAME, {**record, "packed_from": str(crops_dir.resolve())})
    return prop, len(files.paths)
