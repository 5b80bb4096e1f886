"""The gallery built from parts: an immutable reader per generation, one writer owning the lock, and the
search indexes a reader is given (handed on to the next generation, never shared by two)."""

from __future__ import annotations

import numpy as np
import pytest

from handclip.gallery import Gallery, GalleryReader, GalleryWriter
from test_gallery import DIM, FINGERPRINT, clustered, enrol


def test_a_reader_cannot_write_and_keeps_its_generation_while_the_writer_commits(tmp_path):
    vectors, identities, _ = clustered(6, 4)
    writer = GalleryWriter.create(tmp_path / "g", FINGERPRINT, DIM)
    writer.add(vectors[:12], [f"/a/{i}.png" for i in range(12)], identities[:12], [f"h{i}" for i in range(12)])
    before = writer.reader
    assert not any(hasattr(before, name) for name in ("add", "compact", "set_checkpoint"))
    writer.add(vectors[12:], [f"/a/{i}.png" for i in range(12, 24)], identities[12:], [f"h{i}" for i in range(12, 24)])
    after = writer.reader
    assert after is not before and (len(before), len(after)) == (12, 24)
    assert before.generation + 1 == after.generation
    assert before.paths == [f"/a/{i}.png" for i in range(12)] and not before.contains("h20")
    np.testing.assert_array_equal(before.vectors(), vectors[:12])
    np.testing.assert_array_equal(after.vectors(), vectors)
    # The old generation still searches its own rows only.
    [hits] = before.search(vectors[20:21], top_k=24, by="image")
    assert max(int(c.path.split("/")[-1][:-4]) for c in hits) < 12


def test_search_indexes_are_handed_to_the_next_generation_and_extended_not_rebuilt(tmp_path):
    vectors, identities, _ = clustered(10, 6)
    gallery = Gallery.create(tmp_path / "g", FINGERPRINT, DIM)
    enrol(gallery, vectors[:30], identities[:30], prefix="a")
    flat = gallery.reader.indexes.flat()
    old_reader = gallery.reader
    enrol(gallery, vectors[30:], identities[30:], prefix="b")
    assert gallery.reader.indexes.flat() is flat and flat.ntotal == 60  # the same faiss object, grown
    # The previous reader gave its index away: it builds a new one of its own 30 rows when it searches.
    assert old_reader.indexes.flat() is not flat and old_reader.indexes.flat().ntotal == 30


def test_latest_reads_another_writers_commit_and_an_unchanged_gallery_returns_itself(tmp_path):
    vectors, identities, _ = clustered(4, 5)
    writer = GalleryWriter.create(tmp_path / "g", FINGERPRINT, DIM)
    reader = GalleryReader.open(tmp_path / "g")
    assert reader.latest() is reader and len(reader) == 0
    writer.add(vectors, [f"/p/{i}" for i in range(20)], identities, [f"x{i}" for i in range(20)])
    newer = reader.latest()
    assert len(reader) == 0 and len(newer) == 20 and newer.identities() == sorted(set(identities))


def test_the_writer_reads_its_reader_only_through_public_names():
    import ast
    import inspect

    from handclip.gallery import folder, writer

    for module in (writer, folder):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                assert isinstance(owner, ast.Name) and owner.id in ("self", "cls"), \
                    f"{module.__name__} reads private {ast.unparse(node)}"


def test_rows_of_identity_cannot_be_changed_through_a_reader(tmp_path):
    vectors, identities, _ = clustered(2, 3)
    gallery = Gallery.create(tmp_path / "g", FINGERPRINT, DIM)
    enrol(gallery, vectors, identities)
    with pytest.raises(TypeError):
        gallery.reader.rows_of_identity["intruder"] = (0,)
    with pytest.raises(AttributeError):
        gallery.reader.path_of_row.append("/x.png")
