"""HandCLIP model: open_clip backbones, CLIP-ReID features and prompts, safe checkpoints."""

from .backbone import create_clip
from .checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
from .handclip import HandCLIP, ModelOutput, build_model
from .weights import load_weights_file

__all__ = [
    "HandCLIP",
    "ModelOutput",
    "build_model",
    "create_clip",
    "load_checkpoint",
    "load_weights_file",
    "model_fingerprint",
    "save_checkpoint",
]
