"""Loading untrusted files never runs code stored in them."""
import os
import re

import pytest

from utils.core.run_io import PROJECT_ROOT

# Ways a loader can run code from a file. Allowed only where the file names it (the restricted
# unpickler lives in utils/verify/pair_files.py; every .keras load goes through utils/verify/embeddings.py).
RISKY_CALLS = {
    r"\bpickle\.loads?\(|\bUnpickler\(": {"utils/verify/pair_files.py"},
    r"\bload_model\(": {"utils/verify/embeddings.py"},
    r"safe_mode\s*=\s*False|allow_pickle\s*=\s*True|\btorch\.load\(|\bjoblib\.load\(|\byaml\.load\(|"
    r"\bmarshal\.loads?\(|\bshelve\.open\(|\beval\(|\bexec\(": set(),
}


def project_sources():
    yield from sorted(PROJECT_ROOT.glob("*.py"))
    for folder in ("utils", "models", "benchmarks"):
        yield from sorted((PROJECT_ROOT / folder).rglob("*.py"))


def test_no_code_path_loads_untrusted_files_unsafely():
    offenders = []
    for path in project_sources():
        rel = path.relative_to(PROJECT_ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        for pattern, allowed in RISKY_CALLS.items():
            if rel not in allowed and re.search(pattern, text):
                offenders.append((rel, pattern))
    assert not offenders
    assert "safe_mode=True" in (PROJECT_ROOT / "utils" / "verify" / "embeddings.py").read_text()


def test_a_model_file_carrying_python_code_is_refused_without_running_it(tmp_path):
    keras = pytest.importorskip("keras")
    from utils.verify.embeddings import ModelError, load_keras_model

    marker = str(tmp_path / "code_ran")
    inputs = keras.Input((4,))
    # A Lambda layer stores its function's bytecode in the file; loading it unsafely runs it.
    outputs = keras.layers.Lambda(lambda x: x * (open(marker, "w").close() or 1.0))(inputs)
    path = tmp_path / "hostile.keras"
    keras.Model(inputs, outputs).save(path)
    os.unlink(marker)
    with pytest.raises(ModelError, match="safe_mode"):
        load_keras_model(path)
    assert not os.path.exists(marker)
