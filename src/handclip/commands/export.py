"""``handclip export``: a checkpoint's image features as an ONNX file.

Its metadata states the pixel pipeline in front of the graph and that its output is not yet L2-normalised
(docs/method.md, "Feature precision and engines")."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="HandCLIP checkpoint (.pt) written by `handclip train`")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="file format (onnx)")
    parser.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8: dynamic int8 quantisation of the matrix products (smaller, faster on some CPUs; "
                             "its effect on retrieval is in docs/cpu-inference.md)")


def run(args) -> int:
    import json

    from ..preflight import require_file

    require_file("--checkpoint", args.checkpoint, "checkpoint")
    from .. import api

    metadata = api.export_onnx(args.checkpoint, args.out, quantize=args.quantize)
    pipeline = json.loads(metadata["pixel_pipeline"])
    print(f"wrote {args.out}: {metadata['input']} -> {metadata['output']}")
    print(f"  pixels: {'; '.join(json.loads(metadata['pixel_steps']))}")
    print(f"  features: {metadata['feature_normalisation']}")
    print(f"  checked against PyTorch fp32: worst cosine {metadata['min_cosine_to_pytorch_fp32']} "
          f"(quantisation: {metadata['quantization']}; image size {pipeline['image_size']})")
    return 0
