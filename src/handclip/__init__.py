"""HandCLIP: hand-based person identification with CLIP-ReID on open_clip."""

__version__ = "0.1.0"
