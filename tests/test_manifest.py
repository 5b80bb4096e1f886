import csv
import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handclip.atomic import sha256_file
from handclip.data.manifest import COLUMNS, Manifest, ManifestRecord
from handclip.errors import DataError


def rec(split, pid, path, run=None, distractor=False, camid=None):
    return ManifestRecord(split=split, run=run, path=path, pid=pid, camid=camid, dataset="t", subset="s",
                          original_id=str(pid), is_distractor=distractor)


def small_records():
    return [
        rec("train", 7, "/d/7a.jpg"), rec("train", 7, "/d/7b.jpg"), rec("val", 7, "/d/7c.jpg"),
        rec("train", 3, "/d/3a.jpg"), rec("val", 3, "/d/3b.jpg"),
        rec("query", 10, "/d/10a.jpg", run=0), rec("gallery", 10, "/d/10b.jpg", run=0),
        rec("query", 10, "/d/10b.jpg", run=1), rec("gallery", 10, "/d/10a.jpg", run=1),
        rec("gallery", 1010, "/d/x.jpg", run=0, distractor=True),
        rec("gallery", 1010, "/d/x.jpg", run=1, distractor=True),
    ]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_round_trip_is_byte_identical_and_order_independent(tmp_path):
    records = small_records()
    first = Manifest(records)
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    second = Manifest(shuffled)
    assert first.to_csv_bytes() == second.to_csv_bytes()
    a = first.write(tmp_path / "a.csv")
    back = Manifest.read(a)
    assert back == first
    b = back.write(tmp_path / "b.csv")
    assert a.read_bytes() == b.read_bytes()
    assert first.sha256() == sha256_file(a)
    header = a.read_text().splitlines()[0]
    assert header == ",".join(COLUMNS)


def test_written_values_follow_the_contract(tmp_path):
    path = Manifest(small_records()).write(tmp_path / "m.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    train = [r for r in rows if r["split"] == "train"]
    assert all(r["run"] == "" and r["camid"] == "" and r["is_distractor"] == "0" for r in train)
    distractors = [r for r in rows if r["is_distractor"] == "1"]
    assert {r["run"] for r in distractors} == {"0", "1"}
    # canonical order: splits in train, val, query, gallery order
    order = [r["split"] for r in rows]
    assert order == sorted(order, key=["train", "val", "query", "gallery"].index)


def test_accessors():
    m = Manifest(small_records())
    assert m.runs == [0, 1]
    assert [r.path for r in m.split("train")] == ["/d/3a.jpg", "/d/7a.jpg", "/d/7b.jpg"]
    assert len(m.split("gallery", run=0)) == 2
    assert len(m.split("gallery")) == 4
    assert m.train_label_map() == {3: 0, 7: 1}
    assert m.paths() == sorted(set(m.paths()))
    assert len(m.paths()) == 8
    with pytest.raises(ValueError):
        m.split("test")
    assert "train_all" in m.summary() and m.sha256() in m.summary()


def test_without_paths_drops_every_record_of_those_images():
    m = Manifest(small_records())
    smaller = m.without_paths(["/d/x.jpg", "/d/7a.jpg"])
    assert "/d/x.jpg" not in smaller.paths() and "/d/7a.jpg" not in smaller.paths()
    assert len(smaller) == len(m) - 3
    with pytest.raises(DataError, match="run 0 has no query images"):
        m.without_paths(["/d/10a.jpg"])  # the only query image of run 0
    with pytest.raises(DataError, match="no records"):
        m.without_paths(m.paths())


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = write_csv(tmp_path / "sub" / "m.csv", ["split", "run", "path", "pid"],
                     [["train", "", "imgs/a.jpg", "1"], ["query", "0", "../b.jpg", "2"], ["gallery", "0", "/abs/c.jpg", "2"]])
    m = Manifest.read(path)
    assert m.split("train")[0].path == str(tmp_path / "sub" / "imgs" / "a.jpg")
    assert m.split("query")[0].path == str(tmp_path / "b.jpg")
    assert m.split("gallery")[0].path == "/abs/c.jpg"


def test_minimal_columns_get_defaults_and_bom_and_blank_lines_are_fine(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("\ufeffsplit,path,pid\ntrain,/a.jpg,1\n\nquery,/b.jpg,2\ngallery,/c.jpg,2\n\n".encode("utf-8"))
    m = Manifest.read(path)
    assert m.runs == [0]
    record = m.split("train")[0]
    assert record.camid is None and record.is_distractor is False and record.run is None


BAD_ROWS = [
    (["split", "run", "path"], [["train", "", "/a.jpg"]], "line 1: missing column 'pid'"),
    (["split", "run", "path", "pid", "colour"], [["train", "", "/a.jpg", "1", "x"]], "unknown column 'colour'"),
    (["split", "path", "pid", "pid"], [["train", "/a", "1", "1"]], "appears more than once"),
    (["split", "run", "path", "pid"], [["train", "", "/a.jpg", "1"], ["test", "", "/b.jpg", "1"]], "line 3: split 'test'"),
    (["split", "run", "path", "pid"], [["train", "", "/a.jpg", "x1"]], "line 2: pid 'x1' is not an integer"),
    (["split", "run", "path", "pid"], [["train", "", "/a.jpg", "-4"]], "line 2: pid -4 is outside"),
    (["split", "run", "path", "pid"], [["train", "", "/a.jpg", ""]], "line 2: pid is empty"),
    (["split", "run", "path", "pid"], [["train", "0", "/a.jpg", "1"]], "line 2: run must be empty"),
    (["split", "run", "path", "pid"], [["query", "", "/a.jpg", "1"]], "line 2: split 'query' needs a run"),
    (["split", "run", "path", "pid"], [["query", "-1", "/a.jpg", "1"]], "line 2: split 'query' needs a run"),
    (["split", "run", "path", "pid"], [["train", "", "", "1"]], "line 2: path is empty"),
    (["split", "run", "path", "pid"], [["train", "", "/a.jpg"]], "line 2: expected 4 fields, found 3"),
    (["split", "run", "path", "pid", "is_distractor"], [["train", "", "/a.jpg", "1", "yes"]], "is_distractor 'yes'"),
    (["split", "run", "path", "pid", "is_distractor"], [["train", "", "/a.jpg", "1", "1"]], "only allowed in the gallery"),
    (["split", "run", "path", "pid", "camid"], [["train", "", "/a.jpg", "1", "1.5"]], "camid '1.5' is not an integer"),
    (["split", "run", "path", "pid"], [["train", "", "/a.jpg", "99999999999999999999"]], "out of range"),
]


@pytest.mark.parametrize("header,rows,expected", BAD_ROWS)
def test_bad_values_name_file_and_line(tmp_path, header, rows, expected):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError) as info:
        Manifest.read(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


CONSISTENCY = [
    ([["train", "", "/a.jpg", "1", "0"], ["val", "", "/a.jpg", "1", "0"]], "appears twice in train/val"),
    ([["train", "", "/a.jpg", "1", "0"], ["query", "0", "/b.jpg", "2", "0"], ["gallery", "0", "/b.jpg", "2", "0"]],
     "appears twice in run 0"),
    ([["train", "", "/a.jpg", "1", "0"], ["query", "0", "/a.jpg", "2", "0"], ["gallery", "0", "/c.jpg", "2", "0"]],
     "in both train/val and query/gallery"),
    ([["train", "", "/a.jpg", "1", "0"], ["query", "1", "/b.jpg", "2", "0"], ["gallery", "0", "/c.jpg", "2", "0"]],
     "has no"),
    ([["train", "", "/a.jpg", "1", "0"], ["query", "0", "/b.jpg", "2", "0"], ["gallery", "0", "/c.jpg", "2", "1"]],
     "distractor pid 2 collides"),
    ([], "has no records"),
]


@pytest.mark.parametrize("rows,expected", CONSISTENCY)
def test_inconsistent_manifests_are_refused(tmp_path, rows, expected):
    path = write_csv(tmp_path / "bad.csv", ["split", "run", "path", "pid", "is_distractor"], rows)
    with pytest.raises(DataError, match=expected):
        Manifest.read(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        Manifest.read(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is not a file"):
        Manifest.read(tmp_path)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"split,path,pid\n\xff\xfe\x00junk")
    with pytest.raises(DataError, match="not UTF-8"):
        Manifest.read(binary)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        Manifest.read(empty)
    quote = tmp_path / "quote.csv"
    quote.write_text('split,path,pid\ntrain,"/a.jpg"x,1\n')
    with pytest.raises(DataError, match="line 2: malformed CSV"):
        Manifest.read(quote)


def test_paths_with_commas_quotes_and_newlines_survive(tmp_path):
    odd = ['/d/a,b.jpg', '/d/say "hi".jpg', '/d/line\nbreak.jpg', '/d/ spaced .jpg', "/d/ünï.jpg"]
    records = [rec("train", 1, p) for p in odd] + [rec("query", 2, "/q.jpg", run=0), rec("gallery", 2, "/g.jpg", run=0)]
    m = Manifest(records)
    back = Manifest.read(m.write(tmp_path / "m.csv"))
    assert back == m
    assert {r.path for r in back.split("train")} == set(odd)


def test_constructor_validates_records():
    with pytest.raises(DataError, match="needs a run"):
        Manifest([rec("query", 1, "/a.jpg")])
    with pytest.raises(DataError, match="pid -1"):
        Manifest([rec("train", -1, "/a.jpg")])


# --------------------------------------------------------------------------- property-based
FIELD = st.one_of(
    st.sampled_from(["", "0", "1", "2", "-1", "train", "val", "query", "gallery", "x", "1.0", " 3 ", "1e3",
                     "99999999999999999999", "/a.jpg", "b.jpg", "/a.jpg", "\x00", '"', "١"]),
    st.text(max_size=8),
)
HEADER = st.one_of(
    st.just(list(COLUMNS)),
    st.permutations(list(COLUMNS)),
    st.lists(st.sampled_from(list(COLUMNS) + ["extra", "", " pid "]), min_size=0, max_size=10),
)


@st.composite
def csv_documents(draw):
    header = draw(HEADER)
    width = len(header)
    rows = draw(st.lists(st.lists(FIELD, min_size=max(0, width - 1), max_size=width + 1), max_size=8))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    if draw(st.booleans()):  # adversarial damage: cut, splice raw text, stray quotes
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=12)) + text[cut:]
    return text.encode("utf-8", "surrogatepass")


def _check_invariants(m: Manifest, tmp_path):
    for r in m.records:
        assert r.split in ("train", "val", "query", "gallery")
        assert (r.run is None) == (r.split in ("train", "val"))
        assert isinstance(r.pid, int) and r.pid >= 0
        assert r.path
    assert Manifest.read(m.write(tmp_path / "again.csv")) == m


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(csv_documents(), st.binary(max_size=200)))
def test_reader_returns_a_valid_manifest_or_raises_data_error(tmp_path, data):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    try:
        m = Manifest.read(path)
    except DataError as exc:
        message = str(exc)
        assert str(path) in message
        return
    _check_invariants(m, tmp_path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["train", "val", "query", "gallery"]), st.integers(0, 3),
                          st.integers(0, 5), st.integers(0, 9), st.booleans()), min_size=1, max_size=25))
def test_valid_looking_rows_either_load_or_fail_cleanly(tmp_path, rows):
    lines = []
    for split, run, pid, image, distractor in rows:
        run_text = "" if split in ("train", "val") else str(run)
        lines.append([split, run_text, f"/img/{image}.jpg", str(pid), "", "d", "s", str(pid),
                      "1" if distractor and split == "gallery" else "0"])
    path = write_csv(tmp_path / "rows.csv", list(COLUMNS), lines)
    try:
        m = Manifest.read(path)
    except DataError:
        return
    _check_invariants(m, tmp_path)
    assert len(m) == len(lines)
