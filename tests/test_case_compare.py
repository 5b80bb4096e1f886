"""The case report's comparison pages: the top 3 candidates by default, the ranks the examiner asks for
otherwise, each page naming the right identity with the hashes of the two images it shows; a bad
``--compare`` is refused before anything is recorded."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from serve_helpers import enrolled_gallery, make_assets

from handclip import api
from handclip.atomic import sha256_file
from handclip.errors import HandCLIPError
from handclip.forensic.audit import AuditLog
from handclip.gallery.case_compare import comparison_ranks


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("compare-assets"), num_ids=5, images_per_id=3)


@pytest.fixture(scope="module")
def master(assets, tmp_path_factory):
    return enrolled_gallery(assets, tmp_path_factory.mktemp("compare-master") / "gallery")


@pytest.fixture
def gallery(master, tmp_path):
    return Path(shutil.copytree(master, tmp_path / "gallery"))


def _pages(pdf: Path) -> list[str]:
    from pypdf import PdfReader

    return [page.extract_text() for page in PdfReader(str(pdf)).pages]


def _comparisons(pdf: Path) -> dict[int, str]:
    """Rank -> the text of its comparison page (whitespace removed, so wrapped hashes read whole)."""
    found = {}
    for text in _pages(pdf):
        match = re.search(r"Comparison: .* and rank (\d+),", text)
        if match:
            assert int(match.group(1)) not in found, "two comparison pages for one rank"
            found[int(match.group(1))] = re.sub(r"\s+", "", text)
    return found


def _search(assets, gallery, out: Path, **options):
    query = assets["images"] / "0002" / "001.png"
    return api.search_gallery(gallery, [query], calibration=str(assets["calibration"]), device="cpu", top_k=5,
                              report=out, case_id="2026/031", **options)


def test_the_report_compares_the_top_three_by_default_with_the_right_identities_and_hashes(assets, gallery, tmp_path):
    out = tmp_path / "case.pdf"
    found = _search(assets, gallery, out)
    pages = _comparisons(out)
    assert sorted(pages) == [1, 2, 3]
    query = found.queries[0]
    for candidate in query.candidates[:3]:
        text = pages[candidate.rank]
        assert re.sub(r"\s+", "", candidate.identity) in text
        assert candidate.sha256 in text and query.sha256 in text  # the two images by their recorded hashes
        assert sha256_file(candidate.path) == candidate.sha256
        assert f"{candidate.score:.4f}" in text and "LR≈" in text and "notaprobability" in text
        # the strip holds the candidate's other enrolled images (3 enrolled, the best one is large)
        assert f"Otherenrolledimagesof{candidate.identity}(2)" in text
    assert query.candidates[0].identity == "0002"
    for rank in (4, 5):
        assert re.sub(r"\s+", "", query.candidates[rank - 1].sha256) not in "".join(pages.values())


def test_the_report_compares_the_ranks_asked_for_and_none_with_zero(assets, gallery, tmp_path):
    out = tmp_path / "ranks.pdf"
    found = _search(assets, gallery, out, compare="2,4")
    pages = _comparisons(out)
    assert sorted(pages) == [2, 4]
    for rank in (2, 4):
        candidate = found.queries[0].candidates[rank - 1]
        assert candidate.identity in pages[rank] and candidate.sha256 in pages[rank]
    out = tmp_path / "top1.pdf"
    _search(assets, gallery, out, compare=1)
    assert sorted(_comparisons(out)) == [1]
    out = tmp_path / "none.pdf"
    _search(assets, gallery, out, compare="0")
    assert _comparisons(out) == {}


def test_a_prepared_query_is_compared_as_prepared(assets, gallery, tmp_path):
    out = tmp_path / "prepared.pdf"
    found = _search(assets, gallery, out, compare="1", crop="4,4,56,56", mirror=True)
    prepared = found.queries[0].prepared
    text = _comparisons(out)[1]
    assert prepared["sha256"] in text and "Preparedquery" in text


@pytest.mark.parametrize("spec, message", [("0,3", "ranks run from 1"), ("6", "beyond the 5 candidate"),
                                           ("a", "give N"), ("4-2", "runs backwards"), ([1, 99], "beyond")])
def test_a_bad_compare_is_refused_before_anything_is_recorded(assets, gallery, tmp_path, spec, message):
    before = len(AuditLog(gallery).records())
    with pytest.raises(HandCLIPError, match=message):
        _search(assets, gallery, tmp_path / "bad.pdf", compare=spec)
    assert len(AuditLog(gallery).records()) == before and not (tmp_path / "bad.pdf").exists()


def test_comparison_ranks_reads_numbers_lists_and_ranges():
    assert comparison_ranks(None) == (1, 2, 3) and comparison_ranks(None, top_k=2) == (1, 2)
    assert comparison_ranks("4") == (1, 2, 3, 4) and comparison_ranks(0) == ()
    assert comparison_ranks("1,4") == (1, 4) and comparison_ranks("2-4,1") == (1, 2, 3, 4)
    assert comparison_ranks([3, 3, 1]) == (1, 3)
    with pytest.raises(HandCLIPError, match="at most 20"):
        comparison_ranks("25")


def test_the_cli_takes_compare_only_with_a_report(assets, gallery, tmp_path, capsys):
    from handclip import cli

    query = str(assets["images"] / "0001" / "000.png")
    before = len(AuditLog(gallery).records())
    assert cli.main(["search", "--index", str(gallery), "--query", query, "--compare", "2"]) == 2
    assert "--compare chooses the report's comparison pages; give --report" in capsys.readouterr().err
    out = tmp_path / "cli.pdf"
    assert cli.main(["search", "--index", str(gallery), "--query", query, "--top-k", "4", "--device", "cpu",
                     "--calibration", str(assets["calibration"]), "--report", str(out), "--compare", "1,3"]) == 0
    assert sorted(_comparisons(out)) == [1, 3] and len(AuditLog(gallery).records()) == before + 1
