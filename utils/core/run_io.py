"""Run and file helpers shared by every stage: atomic writes, JSON settings, provenance."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # utils/core/run_io.py -> the repository
# The read-only real face data tests and benchmarks use (never copied into the repo).
SHARED_DATA_DIR = Path(os.environ.get("ICYFACE_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))

# Every temporary file the project writes starts with this, so a rerun can sweep
# what a killed run left behind without touching anything else.
TMP_PREFIX = ".icyface-tmp-"


def temporary_name(path: Path) -> Path:
    """A fresh temporary name beside path, keeping its suffixes (writers such as Keras check
    them), for the writer to create with the usual permissions."""
    path = Path(path)
    return path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}{''.join(path.suffixes)}"


@contextlib.contextmanager
def replaced_atomically(path: Path):
    """Yields a temporary path beside `path`, renamed onto `path` when the block succeeds and
    removed when it fails: a kill or a full disk mid-write leaves either the old file or the
    new one, never a partial file under the real name."""
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with replaced_atomically(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


def save_keras_atomically(model, path: Path) -> None:
    """model.save(path) (a .keras archive) without ever leaving a partial file at path."""
    with replaced_atomically(path) as tmp:
        model.save(str(tmp), overwrite=True)


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def remove_stale_temporaries(root: Path, recursive: bool = True) -> int:
    """Delete temporary files a killed run left under root (or in root alone); returns how many."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(TMP_PREFIX):
                os.unlink(os.path.join(dirpath, name))
                removed += 1
        if not recursive:
            dirnames.clear()
    return removed


def is_inside(path, root) -> bool:
    """Whether path, with every link resolved, is root or below it."""
    real, root_real = os.path.realpath(path), os.path.realpath(root)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


# Characters that are path separators or traversal somewhere: '/' and '\\' themselves, and
# look-alikes that Unicode normalisation (NFKC, applied by some file systems, archivers and
# web tools) turns into '/', '\\' or '.' (fullwidth solidus and full stop, one-dot leader...).
_SEPARATOR_LIKE = frozenset("/\\.")


def safe_name_component(name: str) -> str:
    """A file or folder name that stays one harmless path component everywhere.

    Plain names come back unchanged. Characters that are, or normalise to, a path separator
    or a dot (non-ASCII look-alikes), control characters, bytes that are not UTF-8 (kept by
    os.fsdecode as surrogates) and '%' itself are percent-encoded, so distinct inputs keep
    distinct outputs. Names that would still be empty, '.' or '..' are refused."""
    import unicodedata

    out = []
    for ch in name:
        code = ord(ch)
        if ch == "%" or ch in "/\\" or code < 32 or code == 127 or 0xD800 <= code <= 0xDFFF or (
                code > 127 and _SEPARATOR_LIKE & set(unicodedata.normalize("NFKC", ch))):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape")))
        else:
            out.append(ch)
    safe = "".join(out)
    if safe in ("", ".", ".."):
        raise ValueError(f"{name!r} cannot be used as a file name")
    return safe


def package_versions(names) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision() -> str | None:
    """The code revision that produced an output, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")
