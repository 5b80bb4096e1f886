"""The Python API: every workflow the ``handclip`` command runs, importable from one place.

    from handclip import api

    manifest = api.prepare_11k("/data/11k", "dorsal_r", gallery_all=True)       # protocol manifest
    run = api.train(api.load_config("configs/11k_dorsal_r_vitb16.yaml", ["data.root=/data/11k"]))
    encoder = api.Encoder.from_checkpoint(run.best_checkpoint)                  # checkpoint -> features
    result = api.evaluate(encoder, manifest)                                     # result.aggregate["rank1"]
    gallery = api.Gallery.open_or_create("cases/gallery", encoder.fingerprint(), encoder.feature_dim)
    api.enrol(gallery, encoder.single_pass(), api.collect_images("cases/known_people"))
    hits = api.search(gallery, encoder.single_pass(), ["evidence.jpg"], top_k=10)
    found = api.evidential_search(gallery, encoder.single_pass(), ["evidence.jpg"],
                                  calibration="calibration.json")        # LRs + audit record (found.audit)
    api.write_case_report(found, "case.pdf", case_id="2026/017")         # PDF to sign
    api.verify_gallery_audit("cases/gallery").problems                   # [] when the audit trail checks out
    api.calibrate(run.best_checkpoint, "calibration_manifest.csv")      # score -> LR on unseen identities
    app = api.serve_app("cases/gallery", calibration="calibration.json")   # ASGI app: uvicorn.run(app)
    api.pretrain_tiny(api.demo_config().pretrain, "tiny.pt")             # the demo's pretrained tiny CLIP
    api.demo("demo_out")                                                         # synthetic hands, tiny model
    api.train(resume="runs/11k_dorsal_r_vitb16-20261126-120000")                 # continue a killed run
"""

from __future__ import annotations

from .config import Config, load_config
from .data.manifest import Manifest
from .data.protocols import prepare_11k, prepare_folder, prepare_hd
from .datasets import prepare_from_config
from .evaluate.calibrate import calibrate
from .evaluate.protocol import EvalResult
from .evaluate.protocol import evaluate_manifest as evaluate
from .evaluate.report import write_evaluation_outputs
from .gallery import Candidate, Gallery
from .gallery.enrol import collect_images, load_encoder
from .gallery.enrol import enrol_images as enrol
from .gallery.enrol import search_images as search
from .gallery.case_report import write_case_report
from .gallery.evidence import audited_enrol, evidential_search, load_calibration, verify_gallery_audit
from .model.inference import Encoder
from .synthetic.dataset import prepare_synthetic
from .synthetic.pretrain import pretrain_tiny
from .train.engine import RunResult, train
from .workflows.benchmark import run_benchmark as benchmark
from .workflows.demo import demo_config
from .workflows.demo import run_demo as demo

__all__ = [
    "Config", "load_config", "Manifest",
    "prepare_11k", "prepare_hd", "prepare_folder", "prepare_synthetic", "prepare_from_config",
    "train", "RunResult",
    "Encoder", "evaluate", "EvalResult", "write_evaluation_outputs",
    "Gallery", "Candidate", "collect_images", "load_encoder", "enrol", "search",
    "evidential_search", "audited_enrol", "load_calibration", "verify_gallery_audit", "write_case_report",
    "calibrate", "serve_app", "pretrain_tiny",
    "demo", "demo_config", "benchmark",
]


def serve_app(index_dir, checkpoint=None, calibration=None, **settings):
    """The examiner web service over a gallery as an ASGI app (what ``handclip serve`` runs).

    Imported on demand so that ``handclip.api`` does not load the web stack for other workflows."""
    from .serve.app import create_app
    from .serve.state import ServiceState

    return create_app(ServiceState(index_dir, checkpoint=checkpoint, calibration=calibration, **settings))
