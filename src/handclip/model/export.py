"""``handclip export``: a checkpoint's image features as an ONNX file for other runtimes.

The checkpoint is read as every loader reads it (``load_checkpoint``: tensors and plain data only, a
pickle that could run code is refused), exported, checked against PyTorch (``onnx_graph.checked_runner``)
and written atomically. The file's metadata states the whole evaluation pixel pipeline the graph expects
in front of it (decode, resize, scale, normalise) and that its output is not yet L2-normalised, so a
runtime applies each normalisation exactly once (docs/method.md, "Feature precision and engines").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..atomic import atomic_open
from .inference import LOADING_FIELDS, Encoder
from .onnx_graph import INPUT_NAME, OPSET, OUTPUT_NAME, ExportError, checked_graph, with_metadata

ONNX_FORMAT = "handclip-onnx-features"
ONNX_VERSION = 1
QUANTIZATIONS = ("none", "int8")


def pixel_pipeline(encoder: Encoder) -> dict:
    """The evaluation data settings that decide the pixels (the loading settings left out)."""
    fields = encoder.data_cfg.model_dump(mode="json")
    kept = ("image_size", "pixel_mean", "pixel_std", "interpolation", "cache_resolution")
    return {key: fields[key] for key in kept if key not in LOADING_FIELDS}


def onnx_metadata(encoder: Encoder, quantize: str, cosine: float) -> dict[str, str]:
    """The ONNX file's metadata_props: what goes in, what comes out, which model, how it was checked."""
    pipeline = pixel_pipeline(encoder)
    height, width = pipeline["image_size"]
    cache = pipeline["cache_resolution"]
    steps = ["decode the image file, apply its EXIF orientation, convert to RGB"]
    if cache:
        steps.append(f"shrink (bicubic) so the long side is {cache} px")
    steps += [f"resize to {height}x{width} (height x width), {pipeline['interpolation']['eval']}, antialiased",
              "scale to float32 in [0, 1]",
              f"subtract pixel_mean {pipeline['pixel_mean']} and divide by pixel_std {pipeline['pixel_std']} "
              f"per RGB channel (the graph does NOT normalise again)"]
    return {
        "format": ONNX_FORMAT,
        "version": str(ONNX_VERSION),
        "input": f"{INPUT_NAME}: float32 [batch, 3, {height}, {width}], NCHW, RGB, already normalised",
        "pixel_pipeline": json.dumps(pipeline),
        "pixel_steps": json.dumps(steps),
        "output": f"{OUTPUT_NAME}: float32 [batch, {encoder.feature_dim}], NOT L2-normalised",
        "feature_normalisation": "L2-normalise each output row once, then compare by cosine (dot product)",
        "quantization": "none" if quantize == "none" else "dynamic int8 (MatMul/Gemm weights, onnxruntime)",
        "min_cosine_to_pytorch_fp32": f"{cosine:.6f}",
        "model_fingerprint": json.dumps(encoder.fingerprint(), sort_keys=True),
        "checkpoint": Path(encoder.checkpoint).name if encoder.checkpoint else "",
        "opset": str(OPSET),
        "exported_with": f"torch {torch.__version__}",
    }


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, quantize: str = "none") -> dict:
    """Export ``checkpoint``'s features to ``out`` (ONNX); returns the file's metadata."""
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantisation '{quantize}' (use {', '.join(QUANTIZATIONS)})")
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; give the .onnx file to write")
    encoder = Encoder.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    graph, _, cosine = checked_graph(encoder.model, tuple(encoder.data_cfg.image_size), int8=quantize == "int8")
    metadata = onnx_metadata(encoder, quantize, cosine)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as handle:
        handle.write(with_metadata(graph, metadata))  # metadata only: the checked graph is unchanged
    return metadata


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an ONNX file written by ``export_onnx``; another or a damaged file is refused."""
    from .onnx_graph import require_onnxruntime

    require_onnxruntime()
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for what is not an ONNX file
        raise ExportError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    if metadata.get("format") != ONNX_FORMAT or metadata.get("version") != str(ONNX_VERSION):
        raise ExportError(f"{path} is not a HandCLIP feature graph (format {ONNX_FORMAT} version {ONNX_VERSION})")
    return metadata
