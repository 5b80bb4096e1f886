"""Model fingerprints: what identifies the computation a model performs, so that embeddings (a gallery)
and score maps (a calibration) made with one model are never used with another."""

from __future__ import annotations

# Fingerprint keys that describe where a model lives, not what it computes.
FINGERPRINT_IGNORED = frozenset({"checkpoint_path", "path", "created"})


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "...'"


def fingerprint_differences(expected: dict, actual: dict) -> list[str]:
    """The fields on which two model fingerprints differ, as ``key expected vs actual`` strings.

    The same weights re-saved into another checkpoint file (other epoch counter, other extras)
    compute the same embeddings, so the file hash only counts when no weights hash is recorded.
    """
    ignored = set(FINGERPRINT_IGNORED)
    if expected.get("weights_sha256") and expected.get("weights_sha256") == actual.get("weights_sha256"):
        ignored.add("checkpoint_sha256")
    keys = sorted((set(expected) | set(actual)) - ignored)
    return [f"{key} {_describe(expected.get(key))} vs {_describe(actual.get(key))}"
            for key in keys if expected.get(key) != actual.get(key)]
