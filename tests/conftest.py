import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.run_io import PROJECT_ROOT, SHARED_DATA_DIR

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA_DIR / "lfw").is_dir(),
    reason=f"real face data not found at {SHARED_DATA_DIR} (set ICYFACE_SHARED_DATA)")


def run_cli(script: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts as a user would, from the project root."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, env=env, **kwargs)


@pytest.fixture(scope="session")
def celeba_sample(tmp_path_factory) -> Path:
    """A fixed sample of wild celeba-299 photos: 48 identities x up to 4 images."""
    from utils.datasets import copy_sample

    if not (SHARED_DATA_DIR / "celeba-299").is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA_DIR}")
    dest = tmp_path_factory.mktemp("celeba") / "photos"
    copy_sample(SHARED_DATA_DIR / "celeba-299", dest, count=192, per_identity=4)
    return dest
