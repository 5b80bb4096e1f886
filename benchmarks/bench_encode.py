"""Image encoding speed on this machine, against its own FLOP bound, in one run.

Prints the CPU (or GPU), its capability and whether it multiplies bf16 natively, the torch matmul peak in
fp32 and bf16, then for each model (random weights: nothing is downloaded):

- images/s of open_clip's ``encode_image`` in fp32 (the reference; for the demo's tiny-cnn, whose tower is
  HandCLIP's own, the tower's own forward), HandCLIP's feature forward (``HandCLIP.extract``, what
  ``Encoder`` runs) in fp32 and under bf16 autocast, and ONNX Runtime on the exported graph, fp32 and int8;
- each path's ratio to the reference, its fraction of the FLOP bound (FLOPs per image by FlopCounterMode x
  images/s / the matmul peak of the path's dtype; none for int8, whose peak is not measured), and the
  worst cosine of its features to HandCLIP's fp32 features on the same images.

The paths are timed interleaved, batch after batch, and each keeps its best batch, so a shared machine's
load falls on all of them alike: compare ratios, not absolute figures. Then, end to end, ``handclip enrol``
of JPEGs of 1600x1200 (decoding included) with the demo's model, split into decoding + resizing alone and
the model alone.

    python benchmarks/bench_encode.py                                   # all models, batch 16, >= 4 rounds
    python benchmarks/bench_encode.py --models tiny-cnn --enrol-images 100
    python benchmarks/bench_encode.py --device cuda                     # GPU: fp32, TF32, bf16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _bench_common import load_line  # noqa: E402

SIZES = {"ViT-B-16": 224, "RN50": 224, "tiny-cnn": 64}
EXPORT_SECONDS: dict[str, float] = {}  # ONNX Runtime path -> seconds to export, (quantise,) check and load it


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def machine_lines(device: torch.device) -> list[str]:
    from handclip.runtime import cpu_native_bf16, resolve_inference_precision

    chosen, why = resolve_inference_precision(device, "auto")
    if device.type == "cuda":
        head = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        head = (f"CPU {cpu_name()}, {torch.get_num_threads()} torch threads; torch CPU capability "
                f"{torch.backends.cpu.get_cpu_capability()}; native bf16: {cpu_native_bf16() or 'no'} "
                f"(AMX tiles: {torch.cpu._is_amx_tile_supported()}, AVX512-BF16: "
                f"{torch.cpu._is_avx512_bf16_supported()})")
    return [head, f"torch {torch.__version__}; inference_precision auto -> {chosen} ({why}); {load_line()}"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, repeat: int) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def build(backbone: str, size: int, device: torch.device):
    """(HandCLIP model, open_clip reference forward) with the same random weights."""
    import copy

    from handclip.model.handclip import build_model
    from handclip.model.inference import for_inference

    torch.manual_seed(0)
    model = build_model({"backbone": backbone}, {"image_size": [size, size]}, num_ids=10).to(device).eval()
    if backbone == "tiny-cnn":  # HandCLIP's own tower: no open_clip model to compare with
        reference = copy.deepcopy(model.image_encoder)
    else:  # open_clip's own model and forward, in the geometry HandCLIP uses (RN50: CLIP-ReID's last stride 1)
        from handclip.model.backbone import create_clip

        clip = create_clip(backbone, image_size=(size, size), rn_last_stride=model.spec["model"]["rn_last_stride"])
        clip.visual.load_state_dict(model.image_encoder.state_dict())
        reference = clip.to(device).eval().encode_image
    return for_inference(model), reference  # laid out as Encoder lays it out


def flops_per_image(model, size: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.extract(torch.zeros(1, 3, size, size, device=device))
    return float(counter.get_total_flops())


def paths_for(model, reference, size: int, device: torch.device, onnx: bool) -> dict:
    """name -> (forward on a pixel batch, dtype whose peak bounds it)."""
    autocast = (lambda dtype: torch.autocast(device.type, dtype=dtype))
    layout = torch.channels_last if model.kind == "rn" else torch.contiguous_format  # as extract_features

    def extract(x):
        return model.extract(x.contiguous(memory_format=layout))

    paths = {"open_clip fp32 (reference)": (lambda x: reference(x), "fp32"), "HandCLIP fp32": (extract, "fp32")}
    if device.type == "cuda":
        def tf32(x):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            try:
                return extract(x)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        paths["HandCLIP tf32"] = (tf32, "tf32")

    def bf16(x):
        with autocast(torch.bfloat16):
            return extract(x)
    paths["HandCLIP bf16"] = (bf16, "bf16")
    if onnx and device.type == "cpu":
        from handclip.model.onnx_graph import checked_runner

        for name, int8 in (("ONNX Runtime fp32", False), ("ONNX Runtime int8", True)):
            start = time.perf_counter()
            runner, _ = checked_runner(model, (size, size), int8=int8)
            EXPORT_SECONDS[name] = time.perf_counter() - start
            paths[name] = (runner.extract, "fp32")
    return paths


def time_paths(paths: dict, batch: torch.Tensor, rounds: int, device: torch.device, budget: float = 30.0) -> dict:
    """name -> (best seconds per batch, fp32 features of the first batch), timed interleaved: at least
    ``rounds`` rounds, more (up to 50) while they fit in ``budget`` seconds, so that short batches on a
    shared machine get enough tries to find an undisturbed one."""
    best = {name: float("inf") for name in paths}
    outputs = {}
    with torch.inference_mode():
        for name, (forward, _) in paths.items():  # warm-up: first-call costs out of the timing
            outputs[name] = forward(batch).float().cpu()
        start = time.perf_counter()
        for name, (forward, _) in paths.items():  # one more, to see how long a round takes
            forward(batch)
        per_round = time.perf_counter() - start
        rounds = max(rounds, min(50, int(budget / max(per_round, 1e-3))))
        names = list(paths)
        for index in range(rounds):
            # Each round starts with another path, so that no path always runs right after the same one.
            for name in names[index % len(names):] + names[:index % len(names)]:
                forward = paths[name][0]
                sync(device)
                start = time.perf_counter()
                forward(batch)
                sync(device)
                best[name] = min(best[name], time.perf_counter() - start)
    return {"_rounds": rounds, **{name: (best[name], outputs[name]) for name in paths}}


def model_table(backbone: str, device, peaks: dict, batch_size: int, rounds: int, onnx: bool) -> list[str]:
    size = SIZES[backbone]
    model, reference = build(backbone, size, device)
    flops = flops_per_image(model, size, device)
    batch = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    measured = time_paths(paths_for(model, reference, size, device, onnx), batch, rounds, device)
    _, ref_out = measured["open_clip fp32 (reference)"]
    ref_rate = batch_size / measured["open_clip fp32 (reference)"][0]
    fp32 = measured["HandCLIP fp32"][1]
    rows = [f"{backbone} at {size}x{size}, batch {batch_size}, {flops / 1e9:.3f} GFLOP per image (FlopCounterMode), "
            f"best of {measured.pop('_rounds')} interleaved rounds",
            "| path | images/s | vs reference | of the FLOP bound | cosine to HandCLIP fp32 (worst) |",
            "|---|---:|---:|---:|---:|"]
    for name, (seconds, out) in measured.items():
        rate = batch_size / seconds
        peak_key = "bf16" if name.endswith("bf16") else "tf32" if name.endswith("tf32") else "fp32"
        # int8 has peaks of its own (VNNI, AMX-INT8) that this script does not measure
        bound = f"{100 * rate * flops / peaks[peak_key]:.0f}%" if not name.endswith("int8") else "n/a"
        # The reference's output is the projected feature only; HandCLIP's is [last, projected].
        other = fp32[:, -out.shape[1]:] if out.shape[1] != fp32.shape[1] else fp32
        cosine = torch.nn.functional.cosine_similarity(other, out, dim=1).min().item()
        rows.append(f"| {name} | {rate:.2f} | {rate / ref_rate:.2f}x | {bound} | {cosine:.6f} |")
    if EXPORT_SECONDS:
        rows.append("ONNX Runtime engine start-up (export, check against PyTorch, session): " + ", ".join(
            f"{name.split()[-1]} {seconds:.0f} s" for name, seconds in EXPORT_SECONDS.items()))
        EXPORT_SECONDS.clear()
    return rows


def write_jpegs(folder: Path, count: int, ids: int = 10) -> Path:
    """``count`` 1600x1200 JPEGs (quality 90) of synthetic hands, scaled up with sensor-like noise."""
    from PIL import Image

    from handclip.synthetic.render import render_hand

    rng = np.random.default_rng(0)
    for index in range(count):
        person = folder / f"{index % ids:03d}"
        person.mkdir(parents=True, exist_ok=True)
        hand = render_hand(index % ids, index // ids).resize((1600, 1200), Image.BICUBIC)
        pixels = np.asarray(hand, dtype=np.int16) + rng.integers(-6, 7, size=(1200, 1600, 3), dtype=np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(person / f"{index:04d}.jpg", quality=90)
    return folder


def enrol_rows(count: int, precision: str, work: Path) -> list[str]:
    """``handclip enrol`` of ``count`` JPEGs with the demo's model, and its split: decoding + resizing alone,
    the model alone, the rest (hashing, image checks, commits, audit)."""
    from handclip import cli
    from handclip.config import load_config
    from handclip.data.loaders import build_eval_loader
    from handclip.gallery.enrol import collect_images
    from handclip.gallery.session import ExaminerSession
    from handclip.model.checkpoint import save_checkpoint
    from handclip.model.handclip import build_model
    from handclip.model.inference import load_encoder

    images = write_jpegs(work / "jpegs", count)
    cfg = load_config(None, ["model.backbone=tiny-cnn", "data.image_size=[64,64]"])
    checkpoint = save_checkpoint(work / "tiny-cnn.pt", build_model(cfg.model, cfg.data, 10), cfg, {})
    items = collect_images(images)
    paths = [item.path for item in items]
    rows = ["| enrol setting | images/s | ms per image | note |", "|---|---:|---:|---|"]

    def row(name: str, seconds: float, note: str) -> float:
        rows.append(f"| {name} | {count / seconds:.1f} | {1000 * seconds / count:.1f} | {note} |")
        return seconds

    encoder = load_encoder(checkpoint, device="cpu", precision=precision)
    start = time.perf_counter()
    for _ in build_eval_loader(encoder.data_cfg, paths, 64):
        pass
    decode = row("decode + resize only, in-process", time.perf_counter() - start, "no model")
    pixels = torch.randn(64, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=encoder.precision == "bf16"):
        encoder.model.extract(pixels)
        start = time.perf_counter()
        batches = -(-count // 64)
        for _ in range(batches):
            encoder.model.extract(pixels)
    model = row(f"model only ({encoder.precision}, PyTorch)", (time.perf_counter() - start) * count / (64 * batches),
                "pixels already in memory")
    for flag in ("fp32", precision):
        start = time.perf_counter()
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            code = cli.main(["enrol", "--checkpoint", str(checkpoint), "--images", str(images), "--index",
                             str(work / f"gallery-{flag}"), "--no-progress", "--precision", flag])
        assert code == 0
        total = row(f"`handclip enrol --precision {flag}` (as shipped: loading in-process)",
                    time.perf_counter() - start, "hashing, image check, decoding, model, commits, audit")
    with_workers = encoder.with_loading(num_workers=1)
    session = ExaminerSession.open(work / "gallery-workers", encoder=with_workers, create=True)
    start = time.perf_counter()
    session.enrol(items)
    row(f"ExaminerSession.enrol, 1 loader worker ({encoder.precision})", time.perf_counter() - start,
        "decoding in a worker process beside the model")
    rows.append(f"split of `handclip enrol --precision {precision}`: decoding + resizing {100 * decode / total:.0f}%, "
                f"model {100 * model / total:.0f}%, the rest {100 * (total - decode - model) / total:.0f}%")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="ViT-B-16,RN50,tiny-cnn")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4, help="interleaved timed batches per path (best kept)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime paths")
    p.add_argument("--enrol-images", type=int, default=500, help="JPEGs for the end-to-end enrolment (0: none)")
    args = p.parse_args()

    from handclip.runtime import resolve_device, resolve_inference_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    onnx = not args.no_onnx
    if onnx:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            onnx = False
            print("onnxruntime is not installed: the ONNX Runtime rows are left out")
    for line in machine_lines(device):
        print(line)
    n = 4096 if device.type == "cuda" else 2048
    peaks = {"fp32": matmul_peak(torch.float32, device, n, 5), "bf16": matmul_peak(torch.bfloat16, device, n, 5)}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        peaks["tf32"] = matmul_peak(torch.float32, device, n, 5)
        torch.backends.cuda.matmul.allow_tf32 = False
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items())
          + f" (bf16/fp32 {peaks['bf16'] / peaks['fp32']:.2f}x)")
    for backbone in args.models.split(","):
        print()
        for row in model_table(backbone, device, peaks, args.batch_size, args.rounds, onnx):
            print(row, flush=True)
    again = {"fp32": matmul_peak(torch.float32, device, n, 5), "bf16": matmul_peak(torch.bfloat16, device, n, 5)}
    print(f"\nmatmul peak measured again after the models: fp32 {again['fp32'] / 1e9:,.0f}, bf16 "
          f"{again['bf16'] / 1e9:,.0f} GFLOP/s (the fractions above use the first measurement)")
    if args.enrol_images and device.type == "cpu":
        work = Path(tempfile.mkdtemp(prefix="handclip-bench-encode-"))
        try:
            print(f"\nend to end: handclip enrol of {args.enrol_images} JPEGs of 1600x1200, "
                  f"demo model (tiny-cnn, 64x64)")
            for row in enrol_rows(args.enrol_images, resolve_inference_precision(device, "auto")[0], work):
                print(row, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{load_line()}")


if __name__ == "__main__":
    main()
