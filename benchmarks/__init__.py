from pathlib import Path


def tagged_result_path(results_dir: Path, benchmark: str, tag: str, date: str) -> Path:
    """<results_dir>/<benchmark>[-<tag>]-<date>.json: a --tag (e.g. the CPU) keeps two machines'
    runs of one day apart."""
    return results_dir / ("-".join(filter(None, (benchmark, tag, date))) + ".json")
