"""The Python API: every workflow the ``handclip`` command runs, importable from one place.

Each command of the ``handclip`` command line parses its arguments and calls one function of this
module (``handclip.commands``); a notebook calls the same functions. A name is imported from its
package the first time it is used, so a workflow that never touches the model (``scan_manifest``,
``list_api_keys``) does not wait for torch::

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
    api.calibrate(run.best_checkpoint, images="reference_people", out="calibration.json")   # or a folder per person
    matrix = api.aspect_matrix(encoder, api.prepare_11k("/data/11k", "all"))     # every query x gallery aspect
    api.calibrate(run.best_checkpoint, "all_aspects.csv", aspect_pairs=True, out="pairs.json")   # LR per pair
    api.validate(run.best_checkpoint, "calibration.json", "other_people.csv",       # the lab's validation plan
                 "configs/validation/example_criteria.yaml", "validation")       # -> report.html/.pdf/.json
    api.validate_and_record(run.best_checkpoint, "calibration.json", "other_people.csv", "plan.yaml",
                            "validation", index="cases/gallery")                # + a record in its audit log
    api.benchmark("configs", "runs/benchmark", data_11k="/data/11k", data_hd="/data/HD")

    # how features are computed (--precision, --engine; handclip export)
    api.Encoder.from_checkpoint(run.best_checkpoint, precision="bf16")          # or engine="onnxruntime" (CPU)
    api.export_onnx(run.best_checkpoint, "model.onnx")                           # features for other runtimes

    # an examiner's gallery (handclip enrol, search, audit)
    enrolled = api.enrol_images("cases/gallery", "cases/known_people", run.best_checkpoint)   # audited
    found = api.search_gallery("cases/gallery", ["evidence.jpg"], calibration="calibration.json",
                               report="case.pdf", case_id="2026/017")            # LRs, audit record, PDF
    api.verify_audit("cases/gallery").problems                                   # [] when the audit trail checks out
    api.verify_audit("cases/gallery", expect=["17:3fa9..."]).ok                  # still holds a record kept elsewhere
    api.read_audit("cases/gallery").records                                      # every record, oldest first
    api.make_signing_key("/secure/heads.pem")                                    # Ed25519 key pair for signed heads
    api.list_case("cases/gallery", "2026/017").searches                          # a case's searches, from the log
    api.export_case("cases/gallery", "2026/017", "case.zip")                     # one bundle; sha256sum -c checks it
    api.redact_identity("cases/gallery", "0042", "consent withdrawn")            # audited; search no longer shows it
    api.reembed_gallery("cases/gallery", "new_model.pt", "cases/gallery-v2")     # same images, new model, linked logs
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

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> (module under handclip, its name there).
_EXPORTS: dict[str, tuple[str, str]] = {}


def _export(module: str, *names: str, **renamed: str) -> None:
    _EXPORTS.update({name: (module, name) for name in names})
    _EXPORTS.update({name: (module, original) for name, original in renamed.items()})


_export("config", "Config", "load_config")
_export("data.manifest", "Manifest")
_export("data.splits", "DataWarning")
_export("datasets", "prepare_dataset", "prepare_from_config")
_export("data.protocols", "prepare_11k", "prepare_11k_all", "prepare_hd", "prepare_folder")
_export("synthetic.dataset", "prepare_synthetic")
_export("data.images", "scan_manifest", "ManifestScan")
_export("train.engine", "train", "RunResult")
_export("model.inference", "Encoder", "load_encoder")
_export("model.export", "export_onnx")
_export("evaluate.protocol", "EvalResult", evaluate="evaluate_manifest")
_export("evaluate.report", "write_evaluation_outputs")
_export("evaluate.workflow", "evaluate_and_report", "EvaluationReport")
_export("evaluate.aspect_matrix", "aspect_matrix", "AspectMatrix")
_export("evaluate.aspect_report", "aspect_matrix_report", "AspectMatrixReport")
_export("forensic.calibrate", "calibrate")
_export("forensic.calibration", "ScoreCalibration")
_export("forensic.evidence", "load_calibration")
_export("validate.workflow", "validate", "ValidationResult")
_export("validate.criteria", "read_plan", "ValidationPlan")
_export("gallery.session", "ExaminerSession")
_export("gallery.folder", "Gallery")
_export("gallery.reader", "GalleryReader")
_export("gallery.enrol", "EnrolItem", "collect_images")
_export("gallery.results", "Candidate", "QueryResult", "SearchResult")
_export("gallery.casework", "enrol_images", "EnrolReport", "search_gallery", "verify_audit", "read_audit",
        "AuditRecords", "reanchor_audit", "make_signing_key", "SigningKeyFiles")
_export("gallery.cases", "list_case", "CaseSearches")
_export("gallery.case_bundle", "export_case", "CaseExport")
_export("gallery.management", "redact_identity", "RedactReport", "reembed_gallery", "ReembedReport")

_export("serve.service", "serve", "serve_app")
_export("serve.keys", "add_api_key", "list_api_keys", "revoke_api_keys")
_export("synthetic.pretrain", "pretrain_tiny", "pretrain_tiny_from_config")
_export("workflows.validation", "validate_and_record")
_export("workflows.demo", "demo_config", demo="run_demo")
_export("workflows.benchmark", benchmark="run_benchmark")

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name from its package on first use (PEP 562) and keep it here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, original = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__package__}.{module}"), original)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # the same names, for type checkers, editors and the import-layering test
    from .config import Config, load_config
    from .data.images import ManifestScan, scan_manifest
    from .data.manifest import Manifest
    from .data.protocols import prepare_11k, prepare_11k_all, prepare_folder, prepare_hd
    from .data.splits import DataWarning
    from .datasets import prepare_dataset, prepare_from_config
    from .evaluate.protocol import EvalResult
    from .evaluate.protocol import evaluate_manifest as evaluate
    from .evaluate.report import write_evaluation_outputs
    from .evaluate.aspect_matrix import AspectMatrix, aspect_matrix
    from .evaluate.aspect_report import AspectMatrixReport, aspect_matrix_report
    from .evaluate.workflow import EvaluationReport, evaluate_and_report
    from .forensic.calibrate import calibrate
    from .forensic.calibration import ScoreCalibration
    from .forensic.evidence import load_calibration
    from .gallery.case_bundle import CaseExport, export_case
    from .gallery.cases import CaseSearches, list_case
    from .gallery.casework import (
        AuditRecords,
        EnrolReport,
        SigningKeyFiles,
        enrol_images,
        make_signing_key,
        read_audit,
        reanchor_audit,
        search_gallery,
        verify_audit,
    )
    from .gallery.enrol import EnrolItem, collect_images
    from .gallery.management import RedactReport, ReembedReport, redact_identity, reembed_gallery
    from .gallery.folder import Gallery
    from .gallery.reader import GalleryReader
    from .gallery.results import Candidate, QueryResult, SearchResult
    from .gallery.session import ExaminerSession
    from .model.export import export_onnx
    from .model.inference import Encoder, load_encoder
    from .serve.keys import add_api_key, list_api_keys, revoke_api_keys
    from .serve.service import serve, serve_app
    from .synthetic.dataset import prepare_synthetic
    from .synthetic.pretrain import pretrain_tiny, pretrain_tiny_from_config
    from .train.engine import RunResult, train
    from .validate.criteria import ValidationPlan, read_plan
    from .validate.workflow import ValidationResult, validate
    from .workflows.benchmark import run_benchmark as benchmark
    from .workflows.demo import demo_config
    from .workflows.validation import validate_and_record
    from .workflows.demo import run_demo as demo
