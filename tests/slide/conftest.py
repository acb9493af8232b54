"""Fixtures for the slide tests: real fixture paths and an isolated cuCIM probe cache."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from tupac.slide import open_slide

CMU = "cmu-1-small-region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
BACKENDS = ["openslide", "cucim"]


@pytest.fixture(scope="session", autouse=True)
def _probe_cache(tmp_path_factory):
    """Keep probe verdicts of the test run out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TUPAC_CACHE_DIR", str(tmp_path_factory.mktemp("tupac-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def cmu_path(real_dir):
    return real_dir / CMU


@pytest.fixture(scope="session")
def tcga_path(real_dir):
    return real_dir / TCGA


@pytest.fixture(scope="session")
def cmu_pixels(cmu_path) -> np.ndarray:
    """Level 0 of cmu-1 decoded by an independent decoder (tifffile + imagecodecs), (2967, 2220, 3)."""
    return tifffile.TiffFile(cmu_path).pages[0].asarray()


@pytest.fixture(scope="class", params=BACKENDS)
def cmu_reader(request, real_dir):
    with open_slide(real_dir / CMU, backend=request.param) as reader:
        yield reader
