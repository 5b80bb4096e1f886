"""A HandCLIP model's image features as an ONNX graph, run by ONNX Runtime.

The graph computes exactly ``HandCLIP.extract``: pixels that the evaluation pipeline already resized and
normalised in, unnormalised features out. Neither the pixel normalisation nor the L2 normalisation is in
the graph; both stay where every other engine has them (the data pipeline and ``Encoder.features``), so
nothing is applied twice (docs/method.md, "Feature precision and engines"). ``checked_graph`` checks the
graph against PyTorch on random pixels before anyone uses it.

onnxruntime and onnx are optional (``pip install 'handclip[onnx]'``); they are imported only here.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import HandCLIPError

OPSET = 17
INPUT_NAME = "pixels"
OUTPUT_NAME = "features"
# An exported graph must agree with PyTorch's fp32 features at least this closely (cosine, worst of the
# random test images) to be used: fp32 as the exporter promises, int8 as measured (docs/method.md).
FP32_MIN_COSINE = 0.9999
INT8_MIN_COSINE = 0.99


class ExportError(HandCLIPError):
    """A model cannot be exported, or its exported graph does not compute what the model computes."""


def require_onnxruntime():
    """The onnxruntime module, or one line saying how to install it."""
    try:
        import onnx  # noqa: F401  (metadata and quantisation need it too)
        import onnxruntime
    except ImportError:
        raise HandCLIPError("ONNX export and the onnxruntime engine need the optional packages onnxruntime and "
                            "onnx: pip install 'handclip[onnx]'") from None
    return onnxruntime


class _Features(nn.Module):
    """``model.extract`` as a module of its own, so the graph holds only the image path."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.extract(pixels)


def export_graph(model, image_size: tuple[int, int]) -> bytes:
    """The fp32 ONNX graph of ``model.extract`` (batch size free), as bytes; the model's mode is kept."""
    require_onnxruntime()
    was_training = model.training
    wrapper = _Features(model).eval()  # eval: BNNeck on running statistics, no dropout
    example = torch.zeros(2, 3, *image_size)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated in favour of torch.export's, which needs the extra
            # onnxscript package; its trace warnings concern shape checks that a fixed model does not take.
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as exc:  # an operator the exporter cannot express: say so in one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"this model cannot be exported to ONNX ({text[:200]})") from None
    finally:
        model.train(was_training)
    return buffer.getvalue()


def quantize_int8(graph: bytes) -> bytes:
    """``graph`` with dynamic int8 quantisation of its matrix products' weights (activations quantised per
    batch at run time), by onnxruntime.quantization."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="handclip-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # MatMul/Gemm only: dynamic ConvInteger has no fast kernel in onnxruntime's CPU provider.
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        return target.read_bytes()


class OnnxRunner:
    """An ONNX Runtime session over a feature graph, called like ``HandCLIP.extract``."""

    def __init__(self, graph: bytes, threads: int | None = None):
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no per-node notes on the examiner's terminal
        # No busy-waiting between runs: the decoding of the next batch (same process) needs those cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def extract(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


@torch.inference_mode()
def graph_cosine(model, runner: OnnxRunner, image_size: tuple[int, int], images: int = 4, seed: int = 0) -> float:
    """The worst cosine between PyTorch's fp32 features and the graph's, on ``images`` random pixel tensors."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(images, 3, *image_size, generator=generator)
    was_training = model.training
    model.eval()
    try:
        reference = model.extract(pixels).float()
    finally:
        model.train(was_training)
    exported = runner.extract(pixels)
    return float(torch.nn.functional.cosine_similarity(reference, exported, dim=1).min())


def with_metadata(graph: bytes, metadata: dict[str, str]) -> bytes:
    """``graph`` with ``metadata`` as the ONNX file's metadata_props (string keys and values)."""
    require_onnxruntime()
    import onnx

    proto = onnx.load_from_string(graph)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    return proto.SerializeToString()


def refuse_aspect_model(model) -> None:
    """A model with aspect embeddings (``model.sie: aspect``) is refused: its features depend on each image's
    stated aspect, an input the graph (pixels only) does not take."""
    if getattr(model, "aspect_embedding", None) is not None:
        raise ExportError("this model reads each photo's aspect (model.sie: aspect), which the ONNX graph cannot "
                          "take; use --engine torch")


def checked_graph(model, image_size: tuple[int, int], int8: bool = False) -> tuple[bytes, OnnxRunner, float]:
    """(graph, its runner, worst cosine to PyTorch fp32) for ``model``'s exported graph (int8-quantised with
    ``int8``), refused with an ExportError when the graph's features stray from the model's."""
    refuse_aspect_model(model)
    graph = export_graph(model, image_size)
    if int8:
        graph = quantize_int8(graph)
    runner = OnnxRunner(graph)
    cosine = graph_cosine(model, runner, image_size)
    floor = INT8_MIN_COSINE if int8 else FP32_MIN_COSINE
    if not cosine >= floor:
        kind = "int8-quantised" if int8 else "exported"
        raise ExportError(f"the {kind} ONNX graph's features differ from PyTorch's (worst cosine {cosine:.6f}, "
                          f"below {floor}); use --engine torch")
    return graph, runner, cosine


def checked_runner(model, image_size: tuple[int, int], int8: bool = False) -> tuple[OnnxRunner, float]:
    """(runner, worst cosine to PyTorch fp32) of ``checked_graph``."""
    _, runner, cosine = checked_graph(model, image_size, int8)
    return runner, cosine
