import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Conformance verdicts and reproducers go to a per-test cache, never the user's."""
    monkeypatch.setenv("PORTABLE_MOE_CACHE_DIR", str(tmp_path / "cache"))
