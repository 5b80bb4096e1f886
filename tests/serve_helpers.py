"""Shared set-up for the web-service tests: a tiny random-weights model, synthetic hands enrolled
into a gallery, API keys, and a calibration for that model."""

from __future__ import annotations

import io
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch

    from handclip.config import load_config
    from handclip.model.checkpoint import save_checkpoint
    from handclip.model.handclip import build_model

    torch.manual_seed(seed)
    cfg = load_config(None, ["model.backbone=tiny-rn", "data.image_size=[64,64]", "data.num_workers=0"])
    save_checkpoint(path, build_model(cfg.model, cfg.data, 6), cfg, {"epoch": 0})
    return path


IMAGE_CLLR, IDENTITY_CLLR = 0.09486586653807205, 0.05048713285519644


def make_calibration(checkpoint: Path, out: Path) -> Path:
    """A KDE calibration on made-up scores spanning the random-weight model's cosines (0.997-1.0)."""
    from handclip.forensic.calibration import ScoreCalibration, fit_score_map
    from handclip.model.inference import load_encoder

    rng = np.random.default_rng(0)
    maps = {kind: fit_score_map(1 - np.abs(rng.normal(0, width * 6e-4, 400)),
                                1 - np.abs(rng.normal(0, width * 2e-3, 4000)), method="kde")
            for kind, width in (("image", 1.0), ("identity", 0.8))}
    # Unrounded per-kind figures, as `handclip calibrate` writes them; the top level repeats the image kind's.
    kinds = {"image": {"cllr": IMAGE_CLLR, "cllr_min": 0.08123456789, "n_mated": 400, "n_nonmated": 4000},
             "identity": {"cllr": IDENTITY_CLLR, "cllr_min": 0.04109876543, "n_mated": 120, "n_nonmated": 480}}
    summary = {"method": "kde", **kinds["image"], "n_identities": 60, "n_images": 480, "kinds": kinds}
    ScoreCalibration(maps, load_encoder(checkpoint, device="cpu").fingerprint(), summary).save(out)
    return out


def make_assets(root: Path, num_ids: int = 5, images_per_id: int = 3) -> dict:
    from handclip.synthetic.dataset import write_synthetic_dataset

    root.mkdir(parents=True, exist_ok=True)
    images = write_synthetic_dataset(root / "hands", num_ids=num_ids, images_per_id=images_per_id, size=64, seed=0)
    ckpt = make_checkpoint(root / "model.pt")
    return {"images": Path(images), "ckpt": ckpt, "calibration": make_calibration(ckpt, root / "calibration.json")}


def enrolled_gallery(assets: dict, index: Path) -> Path:
    """The synthetic hands enrolled into a fresh gallery at ``index`` (through the audited API)."""
    from handclip.gallery.enrol import collect_images
    from handclip.gallery.session import ExaminerSession

    session = ExaminerSession.open(index, assets["ckpt"], device="cpu", create=True, batch_size=8)
    session.enrol(collect_images(assets["images"]), examiner="setup")
    return index


def add_keys(index: Path) -> dict:
    from handclip.serve.keys import KeyStore

    store = KeyStore(index)
    return {"search": store.add("Searcher", ["search"])[0], "enrol": store.add("Enroller", ["enrol"])[0],
            "both": store.add("A. Examiner", ["search", "enrol"])[0]}


def auth(key: str) -> dict:
    """The request headers that present API key ``key``."""
    return {"X-API-Key": key}


@contextmanager
def reviewed_service(assets: dict, master_gallery: Path, folder: Path):
    """A test client of the service over a copy of ``master_gallery`` in ``folder`` with the calibration of
    ``assets``: (client, keys, index), the keys of ``add_keys`` and a ``review`` key."""
    from fastapi.testclient import TestClient

    from handclip.serve.app import create_app
    from handclip.serve.keys import KeyStore
    from handclip.serve.state import ServiceState

    index = Path(shutil.copytree(master_gallery, folder / "gallery"))
    keys = add_keys(index)
    keys["review"] = KeyStore(index).add("Reviewer", ["search", "review"])[0]
    state = ServiceState(index, calibration=str(assets["calibration"]), device="cpu", batch_size=2)
    with TestClient(create_app(state), base_url="http://localhost") as client:
        yield client, keys, index


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
