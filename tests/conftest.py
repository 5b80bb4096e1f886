import os

# Never reach a model hub from tests: everything a test needs it makes itself.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HANDCLIP_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "handclip-test-cache"))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own cache directory so caches never leak between tests."""
    monkeypatch.setenv("HANDCLIP_CACHE_DIR", str(tmp_path / "cache"))
    yield
