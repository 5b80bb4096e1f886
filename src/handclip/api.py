"""The Python API: every workflow the ``handclip`` command runs, importable from one place.

    from handclip import api

    manifest = api.prepare_11k("/data/11k", "dorsal_r", gallery_all=True)       # protocol manifest
    run = api.train(api.load_config("configs/11k_dorsal_r_vitb16.yaml", ["data.root=/data/11k"]))
    encoder = api.Encoder.from_checkpoint(run.best_checkpoint)                  # checkpoint -> features
    result = api.evaluate(encoder, manifest)                                     # result.aggregate["rank1"]
    session = api.ExaminerSession.open("cases/gallery", run.best_checkpoint, create=True)   # audited, always
    session.enrol(api.collect_images("cases/known_people"))              # .audit: the record it appended
    session = api.ExaminerSession.open("cases/gallery", calibration="calibration.json")
    found = session.search(["evidence.jpg"], top_k=10)                   # LRs + audit record (found.audit)
    session.report(found, "case.pdf", case_id="2026/017")                # PDF to sign
    session.verify_audit().problems                                      # [] when the audit trail checks out
    api.calibrate(run.best_checkpoint, "calibration_manifest.csv")      # score -> LR on unseen identities
    api.Encoder.from_checkpoint(run.best_checkpoint, precision="bf16")  # or engine="onnxruntime" (CPU)
    api.export_onnx(run.best_checkpoint, "model.onnx")                   # features for other runtimes
    app = api.serve_app("cases/gallery", calibration="calibration.json")   # ASGI app: uvicorn.run(app)
    api.pretrain_tiny(api.demo_config().pretrain, "tiny.pt")             # the demo's pretrained tiny CLIP
    api.demo("demo_out")                                                         # synthetic hands, tiny model
    api.train(resume="runs/11k_dorsal_r_vitb16-20261126-120000")                 # continue a killed run
"""

from __future__ import annotations

from .config import Config, load_config
from .data.manifest import Manifest
from .data.protocols import (
    prepare_11k,
    prepare_folder,
    prepare_from_config,
    prepare_hd,
    prepare_synthetic,
)
from .forensic.calibrate import calibrate
from .evaluate.protocol import EvalResult
from .evaluate.protocol import evaluate_manifest as evaluate
from .evaluate.report import write_evaluation_outputs
from .forensic.evidence import load_calibration
from .gallery import Gallery, GalleryReader
from .gallery.enrol import EnrolItem, collect_images
from .gallery.results import Candidate, QueryResult, SearchResult
from .gallery.session import ExaminerSession
from .model.inference import load_encoder
from .model.inference import Encoder
from .model.export import export_onnx
from .train.engine import RunResult, train
from .train.pretrain import pretrain_tiny
from .workflows.benchmark import run_benchmark as benchmark
from .workflows.demo import demo_config
from .workflows.demo import run_demo as demo

__all__ = [
    "Config", "load_config", "Manifest",
    "prepare_11k", "prepare_hd", "prepare_folder", "prepare_synthetic", "prepare_from_config",
    "train", "RunResult",
    "Encoder", "evaluate", "EvalResult", "write_evaluation_outputs",
    "ExaminerSession", "Gallery", "GalleryReader", "EnrolItem", "collect_images", "load_encoder",
    "Candidate", "QueryResult", "SearchResult", "load_calibration",
    "calibrate", "serve_app", "pretrain_tiny", "export_onnx",
    "demo", "demo_config", "benchmark",
]


def serve_app(index_dir, checkpoint=None, calibration=None, **settings):
    """The examiner web service over a gallery as an ASGI app (what ``handclip serve`` runs).

    Imported on demand so that ``handclip.api`` does not load the web stack for other workflows."""
    from .serve.app import create_app
    from .serve.state import ServiceState

    return create_app(ServiceState(index_dir, checkpoint=checkpoint, calibration=calibration, **settings))
