"""``handclip evaluate`` and handclip.evaluate.protocol: numbers checked against a direct computation, one
encoding per image, options that change results only when asked, pid matching, zero-shot, cross-aspect,
gallery_all distractors, and bad input that leaves nothing behind."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_datasets import make_11k_tree

from handclip import cli
from handclip.config import DataConfig, EvalConfig, ModelConfig, SyntheticConfig
from handclip.data.images import load_rgb
from handclip.data.manifest import Manifest
from handclip.data.protocols import prepare_11k
from handclip.data.transforms import build_transforms
from handclip.evaluate.distances import cosine_distance
from handclip.evaluate.metrics import aggregate_runs, evaluate_rank
from handclip.evaluate.protocol import evaluate_manifest
from handclip.evaluate.rerank import re_ranking
from handclip.model.checkpoint import load_checkpoint, save_checkpoint
from handclip.model.handclip import HandCLIP, build_model
from handclip.model.inference import Encoder, extract_features
from handclip.synthetic.dataset import prepare_synthetic

METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
FORENSIC_PICTURES = ("det.png", "fnir_fpir.png", "tippett.png", "lr_calibration.png")
REPORT = ("metrics.json", "metrics.md", "cmc.png", "ranked_list.png", "report.html", *FORENSIC_PICTURES)
IMAGE_SIZE = (64, 64)
SMALL_SHEET = ["--show", "2", "--top-k", "3"]  # the ranked-list picture is the slow part of a report


@pytest.fixture
def main(monkeypatch):
    # cli.main imports every command module; commands of other branches may not be merged yet.
    monkeypatch.setattr(cli, "COMMANDS", {"evaluate": cli.COMMANDS["evaluate"]})
    return cli.main


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """12 train + 8 test identities x 5 images (32 px, upsampled to the 64x64 input), 3 runs."""
    root = tmp_path_factory.mktemp("synthetic")
    cfg = SyntheticConfig(train_ids=12, test_ids=8, images_per_id=5, image_size=32, seed=3)
    manifest = prepare_synthetic(root / "images", cfg, runs=3, seed=1)
    path = manifest.write(root / "manifest.csv")
    return manifest, path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic):
    """A tiny-rn checkpoint whose BNNeck statistics come from the training images.

    Random-init features share one large common direction (cosine distances ~1e-5, rankings decided by
    rounding); centring them in the BNNeck, as training would, spreads them out so rankings are stable.
    """
    manifest, _ = synthetic
    torch.manual_seed(0)
    data_cfg = DataConfig(image_size=IMAGE_SIZE)
    model = build_model(ModelConfig(backbone="tiny-rn", neck_feat="after"), data_cfg, num_ids=12).eval()
    transform = build_transforms(data_cfg, train=False)
    images = torch.stack([transform(load_rgb(r.path)) for r in manifest.split("train")])
    with torch.no_grad():
        _, feat_last, feat_proj = model.image_features(images)
        for bn, feat in ((model.bottleneck, feat_last), (model.bottleneck_proj, feat_proj)):
            bn.running_mean.copy_(feat.mean(0))
            bn.running_var.copy_(feat.var(0) + 1e-12)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model, None, {"epoch": 1})


def direct_metrics(checkpoint_path, manifest, runs=None, drop_distractors=False):
    """Metrics computed without handclip.evaluate.protocol: eval transform, extract, L2, cosine, evaluate_rank."""
    model, _, _ = load_checkpoint(checkpoint_path)
    spec = model.spec
    transform = build_transforms(DataConfig(image_size=tuple(spec["image_size"]), pixel_mean=spec["pixel_mean"],
                                            pixel_std=spec["pixel_std"]), train=False)
    cache = {}

    def feature(path):
        if path not in cache:
            with torch.no_grad():
                f = model.extract(transform(load_rgb(path)).unsqueeze(0))
            cache[path] = torch.nn.functional.normalize(f, dim=1)[0].numpy()
        return cache[path]

    per_run = []
    for run in runs if runs is not None else manifest.runs:
        query = manifest.split("query", run)
        gallery = [r for r in manifest.split("gallery", run) if not (drop_distractors and r.is_distractor)]
        dist = cosine_distance(np.stack([feature(r.path) for r in query]), np.stack([feature(r.path) for r in gallery]))
        result = evaluate_rank(dist, [r.pid for r in query], [r.pid for r in gallery])
        per_run.append({k: result.as_dict()[k] for k in METRICS})
    return per_run, aggregate_runs(per_run)


def assert_close(got, want, tol=1e-9):
    """Nested lists/dicts of numbers equal within ``tol`` (dicts compared on METRICS)."""
    def flat(x):
        if isinstance(x, dict):
            return [v for k in METRICS for v in flat(x[k])]
        if isinstance(x, (list, tuple)):
            return [v for item in x for v in flat(item)]
        return [float(x)]
    got, want = flat(got), flat(want)
    assert len(got) == len(want) and np.allclose(got, want, rtol=0, atol=tol), (got, want)


def read_metrics(out):
    return json.loads((out / "metrics.json").read_text())


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("handclip: error: ") and "Traceback" not in err
    return lines[0]


def assert_nothing_left(out):
    assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


# ----------------------------------------------------------------------------------------------
# The report and its numbers


def test_evaluate_writes_report_whose_numbers_match_a_direct_computation(main, synthetic, checkpoint, tmp_path, capsys):
    manifest, manifest_path = synthetic
    out = tmp_path / "report"
    # fp32 as the direct computation below (auto would be bf16 on a CPU with native bf16: docs/method.md,
    # "Feature precision and engines")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path), "--out", str(out),
                 "--precision", "fp32"]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    for name in REPORT:
        assert (out / name).stat().st_size > 0, name
    assert not (out / "training_curves.png").exists()  # no training log next to this checkpoint
    assert (out / "cmc.png").read_bytes()[:4] == b"\x89PNG"
    data = read_metrics(out)
    per_run, aggregate = direct_metrics(checkpoint, manifest)
    assert [r["run"] for r in data["per_run"]] == [0, 1, 2]
    for got, want, run in zip(data["per_run"], per_run, manifest.runs):
        for key in METRICS:
            assert got[key] == pytest.approx(want[key], abs=1e-9), (run, key)
        assert got["num_query"] == len(manifest.split("query", run))
        assert got["num_gallery"] == len(manifest.split("gallery", run)) == 8
    for key in METRICS:
        assert data["aggregate"][key]["mean"] == pytest.approx(aggregate[key]["mean"], abs=1e-9)
        assert data["aggregate"][key]["std"] == pytest.approx(aggregate[key]["std"], abs=1e-9)
    assert data["num_images_encoded"] == 8 * 5  # every test image once, not once per run
    assert data["feature_dim"] == load_checkpoint(checkpoint)[0].feature_dim
    markdown = (out / "metrics.md").read_text()
    mean_r1 = aggregate["rank1"]["mean"] * 100
    assert f"{mean_r1:.2f} ± " in markdown and "| 2 |" in markdown
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 + len(FORENSIC_PICTURES) and f"{mean_r1:.2f}" in html


def test_each_image_is_encoded_once_per_evaluation(main, synthetic, checkpoint, tmp_path, monkeypatch):
    manifest, manifest_path = synthetic
    seen = []
    original = HandCLIP.extract

    def counting_extract(self, images):
        seen.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(HandCLIP, "extract", counting_extract)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path),
                 "--out", str(tmp_path / "a"), "--batch-size", "7", *SMALL_SHEET]) == 0
    unique = {r.path for run in manifest.runs for s in ("query", "gallery") for r in manifest.split(s, run)}
    per_run_total = sum(len(manifest.split(s, run)) for run in manifest.runs for s in ("query", "gallery"))
    assert sum(seen) == len(unique) == 40 < per_run_total
    assert max(seen) <= 7

    seen.clear()  # flip encodes each image and its mirror: exactly twice as many
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path),
                 "--out", str(tmp_path / "b"), "--flip", *SMALL_SHEET]) == 0
    assert sum(seen) == 2 * len(unique)

    seen.clear()  # two of three runs: only their images
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path),
                 "--out", str(tmp_path / "c"), "--runs", "0,2", *SMALL_SHEET]) == 0
    assert sum(seen) == len({r.path for run in (0, 2) for s in ("query", "gallery") for r in manifest.split(s, run)})
    assert [r["run"] for r in read_metrics(tmp_path / "c")["per_run"]] == [0, 2]


def test_flip_and_rerank_change_numbers_only_when_asked(synthetic, checkpoint):
    manifest, _ = synthetic
    encoder = Encoder.from_checkpoint(checkpoint)

    def run(**options):
        result = evaluate_manifest(encoder, manifest, EvalConfig(**options), keep_distances=True)
        return [[r.metrics[k] for k in METRICS] for r in result.per_run], result

    default, first = run()
    again, second = run()
    assert default == again  # deterministic, bit for bit
    assert np.array_equal(np.stack(list(first.features.values())), np.stack(list(second.features.values())))
    flipped, flip_result = run(flip=True)
    assert not np.allclose(np.stack(list(first.features.values())), np.stack(list(flip_result.features.values())))
    assert flipped != default
    assert flip_result.options["flip"] and not first.options["flip"]
    # The flipped features are the encoder's flip test-time augmentation (whose axis and averaging
    # test_inference checks), image by image.
    paths = list(flip_result.features)
    np.testing.assert_array_equal(np.stack(list(flip_result.features.values())), encoder.features(paths, flip=True))
    # k1 small enough for an 8-image gallery to matter; lambda not the default, so it must be passed on
    asked = dict(k1=4, k2=2, lambda_value=0.5)
    reranked, rerank_result = run(rerank=True, **asked)
    assert reranked != default
    # The features behind the numbers do not depend on re-ranking (it only changes distances).
    assert run(rerank=True, **asked)[0] == reranked
    # The numbers are those of k-reciprocal re-ranking of these features with the asked k1, k2 and lambda.
    table = first.features
    for numbers, (run_id, (query, gallery)) in zip(reranked, rerank_result.splits.items()):
        q, g = np.stack([table[r.path] for r in query]), np.stack([table[r.path] for r in gallery])
        distances = re_ranking(q, g, **asked)
        np.testing.assert_array_equal(rerank_result.distances[run_id], distances)
        expected = evaluate_rank(distances, np.array([r.pid for r in query]), np.array([r.pid for r in gallery]))
        assert numbers == [expected.as_dict()[k] for k in METRICS]


def test_pids_decide_matches_not_folder_names_or_order(synthetic, checkpoint, tmp_path):
    """The prototype numbered identities per folder listing, so query and gallery disagreed (HD ~0%)."""
    manifest, _ = synthetic
    encoder = Encoder.from_checkpoint(checkpoint)

    def numbers(m):
        return [[r.metrics[k] for k in METRICS] for r in evaluate_manifest(encoder, m).per_run]

    # Copy the images into folders whose names sort in the opposite order of their identities, and give
    # every identity a new pid: a consistent relabelling must not change a single number.
    rng = np.random.default_rng(5)
    pids = sorted({r.pid for r in manifest.records})
    new_pid = dict(zip(pids, (int(p) for p in rng.permutation(1000 + np.arange(len(pids))))))
    copies = {}
    for rec in manifest.records:
        if rec.path not in copies:
            folder = tmp_path / "renamed" / f"person_{999 - rec.pid:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            copies[rec.path] = folder / f"img_{len(copies):04d}.png"
            shutil.copyfile(rec.path, copies[rec.path])
    moved = Manifest([dataclasses.replace(rec, path=str(copies[rec.path]), pid=new_pid[rec.pid],
                                          original_id=f"x{rec.original_id}") for rec in manifest.records])
    original = numbers(manifest)
    assert_close(numbers(moved), original, tol=1e-12)
    assert min(run[0] for run in original) > 0

    # Control: pids that disagree between query and gallery (what folder numbering did) do change the result.
    shuffled = dict(zip(pids, (int(p) for p in np.roll(pids, 1))))
    broken = Manifest([dataclasses.replace(rec, pid=shuffled[rec.pid]) if rec.split == "gallery" else rec
                       for rec in manifest.records])
    assert not np.allclose(numbers(broken), original, atol=1e-6)


def test_zero_shot_backbone_goes_through_the_same_report(main, synthetic, tmp_path, capsys):
    _, manifest_path = synthetic
    out = tmp_path / "zs"
    assert main(["evaluate", "--backbone", "tiny-rn", "--image-size", "64", "64", "--manifest", str(manifest_path),
                 "--out", str(out), "--runs", "1", *SMALL_SHEET]) == 0
    assert "zero-shot tiny-rn (random init)" in capsys.readouterr().out
    for name in REPORT:
        assert (out / name).is_file(), name
    data = read_metrics(out)
    assert data["model"] == "zero-shot tiny-rn (random init)"
    assert [r["run"] for r in data["per_run"]] == [1]
    assert data["feature_dim"] == build_model(ModelConfig(backbone="tiny-rn"), DataConfig(image_size=IMAGE_SIZE), 1).feature_dim
    assert "zero-shot tiny-rn" in (out / "report.html").read_text()
    # Seeded random init: the baseline is reproducible.
    again = tmp_path / "zs2"
    assert main(["evaluate", "--backbone", "tiny-rn", "--image-size", "64", "64", "--manifest", str(manifest_path),
                 "--out", str(again), "--runs", "1", *SMALL_SHEET]) == 0
    assert read_metrics(again)["aggregate"] == data["aggregate"]


# ----------------------------------------------------------------------------------------------
# 11k: cross-aspect evaluation and the gallery_all distractors


@pytest.fixture(scope="module")
def hands11k(tmp_path_factory):
    return make_11k_tree(tmp_path_factory.mktemp("11k"), image_size=(40, 30))


def test_cross_aspect_evaluation_uses_the_other_aspects_manifest(main, hands11k, checkpoint, tmp_path):
    outs, images = {}, {}
    for aspect in ("dorsal_r", "dorsal_l"):
        manifest = prepare_11k(hands11k, aspect, runs=2, seed=0)
        path = manifest.write(tmp_path / f"{aspect}.csv")
        outs[aspect] = tmp_path / f"eval-{aspect}"
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(path), "--out", str(outs[aspect]),
                     *SMALL_SHEET]) == 0
        data = read_metrics(outs[aspect])
        per_run, aggregate = direct_metrics(checkpoint, manifest)
        assert_close(data["per_run"], per_run)
        test_paths = {r.path for s in ("query", "gallery") for run in manifest.runs for r in manifest.split(s, run)}
        assert data["num_images_encoded"] == len(test_paths)
        images[aspect] = test_paths
    assert not images["dorsal_r"] & images["dorsal_l"]  # really the other aspect's photos
    assert "11k dorsal right" in (outs["dorsal_r"] / "report.html").read_text()
    assert "11k dorsal left" in (outs["dorsal_l"] / "report.html").read_text()
    # dorsal-left has one more test identity (1045 is train for dorsal-right, test for dorsal-left).
    assert read_metrics(outs["dorsal_l"])["per_run"][0]["num_gallery"] == read_metrics(outs["dorsal_r"])["per_run"][0]["num_gallery"] + 1


def test_gallery_all_adds_distractors_that_never_match(main, hands11k, checkpoint, tmp_path, capsys):
    manifest = prepare_11k(hands11k, "dorsal_r", runs=2, seed=0, gallery_all=True)
    path = manifest.write(tmp_path / "dr_all.csv")
    query_pids = {r.pid for r in manifest.records if r.split == "query"}
    distractors = [r for r in manifest.records if r.is_distractor]
    assert distractors and not query_pids & {r.pid for r in distractors}
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(path), "--gallery-all",
                 "--out", str(tmp_path / "all"), *SMALL_SHEET]) == 0
    with_all = read_metrics(tmp_path / "all")
    assert with_all["options"]["distractors"]
    encoder = Encoder.from_checkpoint(checkpoint)
    own = evaluate_manifest(encoder, manifest, distractors=False)
    assert not own.options["distractors"]
    for run, big, small in zip(manifest.runs, with_all["per_run"], own.per_run):
        gallery = manifest.split("gallery", run)
        assert big["num_gallery"] == len(gallery) > small.num_gallery == sum(not r.is_distractor for r in gallery)
        # Extra non-matching gallery images can only push correct matches down the list.
        for key in METRICS:
            assert big[key] <= small.metrics[key] + 1e-12
    assert_close(with_all["per_run"], direct_metrics(checkpoint, manifest)[0])
    assert_close([r.metrics for r in own.per_run], direct_metrics(checkpoint, manifest, drop_distractors=True)[0])

    plain = prepare_11k(hands11k, "dorsal_r", runs=2, seed=0).write(tmp_path / "dr.csv")
    capsys.readouterr()
    out = tmp_path / "refused"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(plain), "--gallery-all",
                 "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "dr.csv" in line and "distractor" in line
    assert_nothing_left(out)


# ----------------------------------------------------------------------------------------------
# Bad input: one clear line, non-zero exit, no report folder


def _bad_run(main, capsys, argv, out):
    capsys.readouterr()
    code = main([*argv, "--out", str(out)])
    assert code != 0
    line = one_error_line(capsys.readouterr().err)
    assert_nothing_left(out)
    return line


def test_checkpoint_of_another_architecture_is_refused(main, synthetic, tmp_path, capsys):
    _, manifest_path = synthetic
    vit = build_model(ModelConfig(backbone="tiny-vit"), DataConfig(image_size=IMAGE_SIZE), num_ids=12)
    payload_path = save_checkpoint(tmp_path / "vit.pt", vit, None, {})
    payload = torch.load(payload_path, weights_only=True)
    payload["spec"]["model"]["backbone"] = "tiny-rn"  # tensors of one architecture, description of another
    torch.save(payload, tmp_path / "mixed.pt")
    line = _bad_run(main, capsys, ["evaluate", "--checkpoint", str(tmp_path / "mixed.pt"), "--manifest", str(manifest_path)],
                    tmp_path / "out-mixed")
    assert "mixed.pt" in line and "architecture" in line

    # A plain state dict of some other network is not a HandCLIP checkpoint.
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "other.pt")
    line = _bad_run(main, capsys, ["evaluate", "--checkpoint", str(tmp_path / "other.pt"), "--manifest", str(manifest_path)],
                    tmp_path / "out-other")
    assert "other.pt" in line and "not a HandCLIP checkpoint" in line


def test_checkpoint_of_an_incompatible_version_is_refused(main, synthetic, checkpoint, tmp_path, capsys):
    _, manifest_path = synthetic
    payload = torch.load(checkpoint, weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    line = _bad_run(main, capsys, ["evaluate", "--checkpoint", str(tmp_path / "future.pt"), "--manifest", str(manifest_path)],
                    tmp_path / "out")
    assert "future.pt" in line and "version 99" in line


def test_missing_image_is_named_before_any_output(main, synthetic, checkpoint, tmp_path, capsys):
    manifest, _ = synthetic
    images = tmp_path / "images"
    source_root = manifest.records[0].path.rsplit("/", 2)[0]
    shutil.copytree(source_root, images)
    records = [dataclasses.replace(rec, path=rec.path.replace(source_root, str(images))) for rec in manifest.records]
    path = Manifest(records).write(tmp_path / "m.csv")
    victim = next(r.path for r in records if r.split == "query" and r.run == 1)
    Path(victim).unlink()
    line = _bad_run(main, capsys, ["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(path)], tmp_path / "out")
    assert victim in line and "does not exist" in line


def test_unreadable_image_found_by_a_loader_worker_gives_one_line(synthetic, checkpoint, tmp_path):
    """A file that exists but does not decode is met inside a DataLoader worker; the message stays one line."""
    from handclip.errors import DataError

    manifest, _ = synthetic
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    records = [dataclasses.replace(rec, path=str(bad)) if i == 0 else rec
               for i, rec in enumerate(manifest.split("gallery", 0))]
    model = Encoder.from_checkpoint(checkpoint).model

    with pytest.raises(DataError) as info:
        extract_features(model, records, DataConfig(image_size=IMAGE_SIZE, num_workers=1), batch_size=4)
    assert "\n" not in str(info.value) and "broken.png" in str(info.value)
    assert "Traceback" not in str(info.value) and "worker" not in str(info.value)


def test_run_that_does_not_exist_is_refused(main, synthetic, checkpoint, tmp_path, capsys):
    _, manifest_path = synthetic
    line = _bad_run(main, capsys, ["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path),
                                   "--runs", "99"], tmp_path / "out")
    assert "run 99" in line and "0..2" in line
    line = _bad_run(main, capsys, ["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path),
                                   "--runs", "first"], tmp_path / "out")
    assert "--runs" in line


def test_failure_while_drawing_leaves_no_partial_report(main, synthetic, checkpoint, tmp_path, capsys, monkeypatch):
    from handclip.errors import HandCLIPError
    from handclip.evaluate import report

    _, manifest_path = synthetic

    def broken_sheet(*args, **kwargs):
        raise HandCLIPError("drawing failed on purpose")

    monkeypatch.setattr(report, "ranked_list_sheet", broken_sheet)
    line = _bad_run(main, capsys, ["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path)],
                    tmp_path / "deep" / "er" / "out")
    assert "drawing failed on purpose" in line
    assert not (tmp_path / "deep").exists()  # folders made for the report are gone too


def test_rewriting_a_report_folder_drops_stale_pictures(main, synthetic, checkpoint, tmp_path):
    _, manifest_path = synthetic
    out = tmp_path / "out"
    out.mkdir()
    (out / "training_curves.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path), "--out", str(out),
                 "--runs", "0", *SMALL_SHEET]) == 0
    assert not (out / "training_curves.png").exists()  # would have been shown as this model's curves
    assert (out / "notes.txt").read_text() == "mine"  # files HandCLIP did not write are left alone
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT, "notes.txt"])
    # --show 0: no ranked-list picture, and the one from the previous report goes too.
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path), "--out", str(out),
                 "--runs", "0", "--show", "0"]) == 0
    html = (out / "report.html").read_text()
    assert not (out / "ranked_list.png").exists() and html.count("data:image/png") == 1 + len(FORENSIC_PICTURES)


def test_evaluate_gives_identity_bootstrap_intervals_beside_the_point_figures(main, synthetic, checkpoint, tmp_path,
                                                                               capsys):
    _, manifest_path = synthetic
    out, plain = tmp_path / "with", tmp_path / "without"
    common = ["--checkpoint", str(checkpoint), "--manifest", str(manifest_path), "--precision", "fp32", *SMALL_SHEET]
    assert main(["evaluate", *common, "--out", str(out), "--intervals", "20"]) == 0
    assert "95% identity-bootstrap intervals: eer [" in capsys.readouterr().out
    assert main(["evaluate", *common, "--out", str(plain), "--intervals", "0"]) == 0
    data, without = read_metrics(out)["forensic"], read_metrics(plain)["forensic"]
    assert without["intervals"] == {} and data["aggregate"] == without["aggregate"]
    eer = data["intervals"]["eer"]
    assert eer["estimate"] == data["aggregate"]["eer"]["mean"] and eer["replicates"] == 20
    assert eer["low"] <= eer["estimate"] <= eer["high"]
    # 8 people: 28 different-person pairs of people cannot support FNMR at FMR 0.01 (100 needed).
    fnmr = data["intervals"].get("fnmr@fmr=0.01")
    assert fnmr is None or (not fnmr["supported"] and "28 different-person pairs of people" in fnmr["note"])
    markdown = (out / "metrics.md").read_text()
    assert "95% interval (identity bootstrap)" in markdown
    assert f"{100 * eer['low']:.2f} to {100 * eer['high']:.2f}" in markdown
    assert "interval (identity bootstrap)" not in (plain / "metrics.md").read_text()
    assert main(["evaluate", *common, "--out", str(tmp_path / "bad"), "--intervals", "-1"]) == 2
    assert "--intervals" in one_error_line(capsys.readouterr().err)


def test_evaluate_warns_when_its_calibration_was_fitted_on_the_people_it_scores(main, synthetic, checkpoint, tmp_path,
                                                                               capsys):
    from handclip.forensic.calibrate import calibrate

    _, manifest_path = synthetic
    calibration = tmp_path / "calibration.json"
    calibrate(checkpoint, manifest_path, out=calibration)  # fitted on the manifest's 8 query/gallery people
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(manifest_path), "--out",
                 str(tmp_path / "eval"), "--calibration", str(calibration), "--intervals", "0", "--show", "0"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "in the calibration" in line]
    assert len(warnings) == 1 and warnings[0].startswith("handclip: warning: 8 of the 8 identities of manifest ")
