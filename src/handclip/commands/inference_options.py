"""The options that say how a command computes image features: ``--precision`` and ``--engine``."""

from __future__ import annotations

PRECISIONS = ("auto", "fp32", "bf16")  # runtime.inference_precision
ENGINES = ("torch", "onnxruntime", "onnxruntime-int8")  # handclip.model.inference.ENGINES


def add_inference_arguments(parser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="feature precision: auto (default) is bf16 where the hardware multiplies bf16 natively "
                             "(AMX or AVX512-BF16 CPUs, bf16 GPUs), else fp32; the command says which it chose")
    parser.add_argument("--engine", choices=ENGINES, default="torch",
                        help="torch (default), or ONNX Runtime on the model's exported graph (CPU; needs "
                             "pip install 'handclip[onnx]'); onnxruntime-int8 quantises its weights to int8")
