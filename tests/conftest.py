import os

# Never reach a model hub from tests: everything a test needs it makes itself.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HANDCLIP_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "handclip-test-cache"))

# Under pytest-xdist each worker gets one core: two workers with two OpenMP threads each on a 2-core
# machine spin against each other and ran the torch-heavy tests up to 15x slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own cache directory so caches never leak between tests."""
    monkeypatch.setenv("HANDCLIP_CACHE_DIR", str(tmp_path / "cache"))
    yield


def pytest_report_header(config):
    """Name the CPU kernels torch runs on: learning tests' figures depend on them (``-m learning``)."""
    import torch

    return f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}"
