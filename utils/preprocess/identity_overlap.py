"""Identity exclusion lists: the training identities that are also test identities.

CASIA-WebFace and MS1M share people with LFW (and other test sets); published results train
without them. `train_classifier.py --exclude-identities FILE` drops the identities FILE lists
(one identity folder name, or pack label, per line); this module builds such a file by
matching a dataset's identity names against LFW's, ignoring case, accents and punctuation:

    python -m utils.preprocess.identity_overlap --names data/CASIA-WebFace/names.txt --lfw-dir lfw --out exclude.txt

--names is either a folder-per-identity dataset (its folder names are the names) or a text
file: one name per line, or CASIA's "<folder id> <Name_Surname>" lines (the id is what is
written out).
"""
from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from pathlib import Path

from utils.core.run_io import atomic_write_bytes


def name_key(name: str) -> str:
    """"José_María  Aznar" and "jose maria aznar" -> "jose maria aznar"."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return " ".join(re.findall(r"[a-z0-9]+", plain.lower()))


def read_names(source: Path) -> list[tuple[str, str]]:
    """(identity as training knows it, person's name) for every identity of `source`."""
    source = Path(source)
    if source.is_dir():
        return [(p.name, p.name) for p in sorted(source.iterdir()) if p.is_dir()]
    pairs = []
    for line in source.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split(None, 1)
        if not fields:
            continue
        # CASIA's names.txt: "0000045 Rick_Yune"; otherwise the whole line is the name.
        pairs.append((fields[0], fields[1].strip()) if len(fields) == 2 and fields[0].isdigit() else
                     (line.strip(), line.strip()))
    return pairs


def overlapping_identities(names: list[tuple[str, str]], test_names) -> list[str]:
    """The identities whose name matches one of test_names (case, accents, punctuation ignored)."""
    keys = {name_key(n) for n in test_names}
    keys.discard("")
    return [identity for identity, name in names if name_key(name) in keys]


def trained_identities(run_dir: Path) -> list[str]:
    """The identities a training run learned: its classes.txt ("<label>\t<identity>" per line)."""
    path = Path(run_dir) / "classes.txt"
    return [line.split("\t", 1)[1] for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line]


def shared_people(tree: Path, identities) -> list[str]:
    """The people of a folder-per-identity tree who are also among `identities` (names matched as
    overlapping_identities matches them), sorted."""
    return sorted(overlapping_identities(read_names(tree), identities))


def read_exclusions(path: Path) -> set[str]:
    """An exclusion file's identities (blank lines and '#' comments ignored)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {line.split("#", 1)[0].strip() for line in lines} - {""}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", type=Path, required=True,
                   help="the training set's identities: its folder, or a names file (CASIA's names.txt)")
    p.add_argument("--lfw-dir", type=Path, required=True,
                   help="a test set in LFW's layout (one folder per person); or a text file of names")
    p.add_argument("--out", type=Path, required=True, help="the exclusion list to write")
    args = p.parse_args(argv)
    for path in (args.names, args.lfw_dir):
        if not path.exists():
            print(f"error: {path} not found", file=sys.stderr)
            return 2
    names = read_names(args.names)
    test_names = [name for _, name in read_names(args.lfw_dir)]
    overlap = overlapping_identities(names, test_names)
    atomic_write_bytes(args.out, "".join(f"{identity}\n" for identity in overlap).encode())
    print(f"{len(overlap)} of {len(names)} identities of {args.names} are among the {len(test_names)} people of "
          f"{args.lfw_dir}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
