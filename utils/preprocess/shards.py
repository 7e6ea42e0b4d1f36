"""Splitting a preprocessing run into chunks and shards, and merging the shards' outputs.

Identities are hashed into buckets, and each bucket's images (in discovery order) are cut
into fixed chunks: the unit of work, of MTCNN batching and of resumption. A shard
(--shard K/N) is a set of buckets, so N machines make the same chunks, hence the same
crops, as one machine; merge_shards then checks the shards' manifests cover the input
exactly once and joins them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from utils.core.folder_lock import LOCK_NAME, FolderBusyError, hold_folder
from utils.core.run_io import read_json, remove_stale_temporaries, write_json
from utils.preprocess.datasets import DatasetScan, ImageEntry
from utils.preprocess.manifest import MANIFEST_NAME, read_manifest, tally, write_manifest
from utils.preprocess.settings import (
    SETTINGS_NAME,
    PreprocessError,
    PreprocessSettings,
    check_existing_settings,
    normalised_settings,
    run_record,
    scan_input,
)

# Buckets of identities: about this many images each, so chunks rarely end short of a batch.
IMAGES_PER_BUCKET = 256
MIN_BUCKETS, MAX_BUCKETS = 16, 4096


@dataclass(frozen=True)
class Shard:
    """Part `index` of `count` (1-based) of a dataset split by identity."""

    index: int
    count: int

    def __post_init__(self):
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 1 <= K <= N")

    @classmethod
    def parse(cls, text: str, environ=None) -> "Shard":
        """K/N; or auto (a SLURM array job) / auto/N (a Kubernetes Indexed Job of N completions, or
        a SLURM array checked to have N tasks), read from the scheduler's environment."""
        head, _, tail = text.partition("/")
        if head == "auto":
            try:
                count = int(tail) if tail else None
            except ValueError:
                raise ValueError(f"--shard auto/N takes the number of shards as N, got {text!r}") from None
            return cls._from_scheduler(os.environ if environ is None else environ, count)
        try:
            index, count = (int(v) for v in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard takes K/N (e.g. 2/8), auto or auto/N, got {text!r}") from None
        return cls(index, count)

    @classmethod
    def _from_scheduler(cls, env, count: int | None) -> "Shard":
        def number(name):
            try:
                return int(env[name])
            except ValueError:
                raise ValueError(f"--shard auto: {name}={env[name]!r} is not a number") from None

        if "SLURM_ARRAY_TASK_ID" in env:
            first, step = number("SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0, \
                number("SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
            if "SLURM_ARRAY_TASK_COUNT" in env:
                tasks = number("SLURM_ARRAY_TASK_COUNT")
            elif "SLURM_ARRAY_TASK_MAX" in env:
                tasks = (number("SLURM_ARRAY_TASK_MAX") - first) // step + 1
            else:
                raise ValueError("--shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                                 "SLURM_ARRAY_TASK_MAX is; give --shard K/N")
            if count is not None and count != tasks:
                raise ValueError(f"--shard auto/{count}: the SLURM array has {tasks} tasks")
            return cls((number("SLURM_ARRAY_TASK_ID") - first) // step + 1, tasks)
        if "JOB_COMPLETION_INDEX" in env:
            if count is None:
                raise ValueError("--shard auto in a Kubernetes Indexed Job needs the job's completions: "
                                 "--shard auto/N")
            return cls(number("JOB_COMPLETION_INDEX") + 1, count)
        raise ValueError("--shard auto: neither a SLURM array job (SLURM_ARRAY_TASK_ID) nor a Kubernetes Indexed "
                         "Job (JOB_COMPLETION_INDEX) is in the environment; give --shard K/N")

    @property
    def tag(self) -> str:
        return f"{self.index}-of-{self.count}"

    def holds(self, bucket: int) -> bool:
        return bucket % self.count == self.index - 1


def manifest_name(shard: Shard | None = None) -> str:
    return MANIFEST_NAME if shard is None else f"manifest-{shard.tag}.csv"


def settings_name(shard: Shard | None = None) -> str:
    return SETTINGS_NAME if shard is None else f"preprocess-{shard.tag}.json"


def lock_name(shard: Shard | None = None) -> str:
    """A shard holds its own lock, so the shards of one job share the output tree at once."""
    return LOCK_NAME if shard is None else f"{LOCK_NAME}-{shard.tag}"


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


def _check_shard_records(records: dict[tuple[int, int], dict], input_dir: Path, output_dir: Path) -> int:
    """The split N, once every shard of it has finished with the same settings and input."""
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
    # Normalised: a shard resumed after a settings key was renamed matches the ones that were not.
    if len({json.dumps(normalised_settings(r["settings"]), sort_keys=True) for r in records.values()}) > 1:
        raise PreprocessError(f"the shards in {output_dir} were made with different settings; rerun them alike")
    sources = {r["input_dir"] for r in records.values()}
    if sources != {str(input_dir)}:
        raise PreprocessError(f"the shards were made from {', '.join(sorted(sources))}, not {input_dir}; "
                              f"pass the same --input-dir")
    return n


def _merged_rows(scan: DatasetScan, n: int, output_dir: Path) -> list[dict]:
    """Every input image's row from the N shard manifests, in input order; refuses (naming
    examples) images in no manifest or in several, rows of vanished inputs, missing crops."""
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
    return [rows[p] for p in inputs]


def merge_shards(input_dir: Path, output_dir: Path) -> MergeSummary:
    """Check that the shards in output_dir cover every image of input_dir exactly once, with
    one set of settings and every crop present, then write manifest.csv and preprocess.json.
    Nothing is written unless every check passes."""
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if not output_dir.is_dir():  # nothing to hold; _merge_held says that no shard ran there
        return _merge_held(input_dir, output_dir)
    try:
        with hold_folder(output_dir):  # not while an unsharded run or another merge writes there
            return _merge_held(input_dir, output_dir)
    except FolderBusyError as err:
        raise PreprocessError(f"output folder {err}") from None


def _merge_held(input_dir: Path, output_dir: Path) -> MergeSummary:
    records = {key: read_json(path) for key, path in shard_settings_files(output_dir).items()}
    n = _check_shard_records(records, input_dir, output_dir)
    settings = PreprocessSettings.from_dict(next(iter(records.values()))["settings"])
    check_existing_settings(output_dir / SETTINGS_NAME, settings, input_dir)

    scan = scan_input(input_dir)
    if any(r["shard"]["buckets"] != bucket_count(len(scan.entries)) for r in records.values()):
        raise PreprocessError(f"{input_dir} changed since the shards ran (now {len(scan.entries)} images, so a "
                              f"different split); rerun every shard")
    ordered = _merged_rows(scan, n, output_dir)

    remove_stale_temporaries(output_dir, recursive=False)  # identity folders belong to the shards' reruns
    write_manifest(output_dir / MANIFEST_NAME, ordered)
    counts, per_detector = tally(ordered)
    summary = MergeSummary(shards=n, images=len(ordered), identities=len(scan.identities), counts=counts,
                           per_detector=per_detector, ignored=len(scan.ignored), output_dir=str(output_dir))
    write_json(output_dir / SETTINGS_NAME, {
        **run_record(input_dir, settings, "complete"),
        "summary": dict(summary.__dict__), "shards": [records[k, n]["summary"] for k in range(1, n + 1)],
        "identities": len(scan.identities), "ignored_entries": scan.ignored[:1000]})
    return summary
