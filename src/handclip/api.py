"""The Python API: every workflow the ``handclip`` command runs, importable from one place.

Each command of the ``handclip`` command line parses its arguments and calls one function of this
module (``handclip.commands``); a notebook calls the same functions::

    from handclip import api

    # data (handclip prepare, handclip scan)
    manifest = api.prepare_11k("/data/11k", "dorsal_r", gallery_all=True)       # protocol manifest
    manifest = api.prepare_dataset("hd", "/data/HD", runs=10, out="hd.csv")      # any registered dataset
    api.scan_manifest("hd.csv").problems                                         # [] when every image is usable

    # training and evaluation (handclip train, evaluate, calibrate, benchmark)
    run = api.train(api.load_config("configs/11k_dorsal_r_vitb16.yaml", ["data.root=/data/11k"]))
    api.train(resume="runs/11k_dorsal_r_vitb16-20261126-120000")                 # continue a killed run
    encoder = api.Encoder.from_checkpoint(run.best_checkpoint)                  # checkpoint -> features
    result = api.evaluate(encoder, manifest)                                     # result.aggregate["rank1"]
    report = api.evaluate_and_report("hd.csv", checkpoint=run.best_checkpoint)  # + forensic figures, report.html
    print("\\n".join(report.lines()))
    api.calibrate(run.best_checkpoint, "unseen_people.csv", out="calibration.json")   # score -> LR
    api.benchmark("configs", "runs/benchmark", data_11k="/data/11k", data_hd="/data/HD")

    # an examiner's gallery (handclip enrol, search, audit)
    enrolled = api.enrol_images("cases/gallery", "cases/known_people", run.best_checkpoint)   # audited
    found = api.search_gallery("cases/gallery", ["evidence.jpg"], calibration="calibration.json",
                               report="case.pdf", case_id="2026/017")            # LRs, audit record, PDF
    api.verify_audit("cases/gallery").problems                                   # [] when the audit trail checks out
    api.read_audit("cases/gallery").records                                      # every record, oldest first
    session = api.ExaminerSession.open("cases/gallery", calibration="calibration.json")   # one session, many searches
    found = session.search(["evidence.jpg"], top_k=10)                           # found.queries[0].candidates

    # the web service (handclip serve, serve-keys)
    secret, key = api.add_api_key("cases/gallery", "A. Examiner", ["search", "enrol"])
    api.list_api_keys("cases/gallery").keys; api.revoke_api_keys("cases/gallery", "A. Examiner")
    app = api.serve_app("cases/gallery", calibration="calibration.json")        # ASGI app: uvicorn.run(app)
    api.serve("cases/gallery", calibration="calibration.json", port=8080)       # runs until stopped

    # the built-in demo (handclip demo, pretrain-tiny)
    api.pretrain_tiny_from_config(api.demo_config(), "tiny.pt")                  # the demo's pretrained tiny CLIP
    api.demo("demo_out")                                                         # synthetic hands, tiny model
"""

from __future__ import annotations

from .config import Config, load_config
from .data.images import ManifestScan, scan_manifest
from .data.manifest import Manifest
from .data.protocols import prepare_11k, prepare_folder, prepare_hd
from .data.splits import DataWarning
from .datasets import prepare_dataset, prepare_from_config
from .evaluate.protocol import EvalResult
from .evaluate.protocol import evaluate_manifest as evaluate
from .evaluate.report import write_evaluation_outputs
from .evaluate.workflow import EvaluationReport, evaluate_and_report
from .forensic.calibrate import calibrate
from .forensic.calibration import ScoreCalibration
from .forensic.evidence import load_calibration
from .gallery import Gallery, GalleryReader
from .gallery.casework import AuditRecords, EnrolReport, enrol_images, read_audit, search_gallery, verify_audit
from .gallery.enrol import EnrolItem, collect_images
from .gallery.results import Candidate, QueryResult, SearchResult
from .gallery.session import ExaminerSession
from .model.inference import Encoder, load_encoder
from .serve.keys import add_api_key, list_api_keys, revoke_api_keys
from .serve.service import serve, serve_app
from .synthetic.dataset import prepare_synthetic
from .synthetic.pretrain import pretrain_tiny, pretrain_tiny_from_config
from .train.engine import RunResult, train
from .workflows.benchmark import run_benchmark as benchmark
from .workflows.demo import demo_config
from .workflows.demo import run_demo as demo

__all__ = [
    "Config", "load_config", "Manifest", "DataWarning",
    "prepare_dataset", "prepare_11k", "prepare_hd", "prepare_folder", "prepare_synthetic", "prepare_from_config",
    "scan_manifest", "ManifestScan",
    "train", "RunResult",
    "Encoder", "load_encoder", "evaluate", "EvalResult", "write_evaluation_outputs",
    "evaluate_and_report", "EvaluationReport",
    "calibrate", "ScoreCalibration", "load_calibration",
    "ExaminerSession", "Gallery", "GalleryReader", "EnrolItem", "collect_images",
    "Candidate", "QueryResult", "SearchResult",
    "enrol_images", "EnrolReport", "search_gallery", "verify_audit", "read_audit", "AuditRecords",
    "serve", "serve_app", "add_api_key", "list_api_keys", "revoke_api_keys",
    "pretrain_tiny", "pretrain_tiny_from_config", "demo", "demo_config", "benchmark",
]
