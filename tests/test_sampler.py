from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handclip.data.sampler import PKSampler
from handclip.errors import TrainingError


def layout(counts: list[int]) -> list[int]:
    """Dataset labels with counts[i] images of identity 10 * i + 3 (non-contiguous ids), interleaved order."""
    labels = [10 * pid + 3 for pid, n in enumerate(counts) for _ in range(n)]
    return list(np.random.default_rng(0).permutation(labels))


def check_epoch(sampler: PKSampler, labels: list[int]) -> list[list[int]]:
    """Assert the P x K invariants for the current epoch (and, with ``leftover="extra_batch"``, that every
    identity is visited); return the batches."""
    P, K = sampler.P, sampler.K
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    by_id: dict[int, set[int]] = {}
    for i, label in enumerate(labels):
        by_id.setdefault(label, set()).add(i)
    for batch in batches:
        assert len(batch) == P * K
        ids = [labels[i] for i in batch]
        counts = Counter(ids)
        assert len(counts) == P, "P distinct identities per batch"
        assert set(counts.values()) == {K}, "K images of each identity"
        for start in range(0, P * K, K):  # each identity's K images are contiguous
            chunk = batch[start:start + K]
            assert len({labels[i] for i in chunk}) == 1
            if len(by_id[labels[chunk[0]]]) >= K:
                assert len(set(chunk)) == K, "no image repeated when the identity has K or more"
    if sampler.leftover == "extra_batch":
        visited = {labels[i] for batch in batches for i in batch}
        assert visited == set(labels), "every identity visited every epoch"
    return batches


def test_batches_are_p_ids_by_k_images_and_visit_every_id():
    labels = layout([13, 4, 5, 2, 9, 1, 7, 8, 3, 6, 12, 4])
    sampler = PKSampler(labels, ids_per_batch=4, images_per_id=4, seed=0, leftover="extra_batch")
    for epoch in range(5):
        sampler.set_epoch(epoch)
        check_epoch(sampler, labels)


def test_drop_leaves_out_the_last_identities_as_clip_reid_and_extra_batch_adds_one_batch():
    # 5 identities x 4 images, 4 per batch: one batch per epoch, and CLIP-ReID's sampler drops the fifth.
    labels = layout([4] * 5)
    dropped = PKSampler(labels, ids_per_batch=4, images_per_id=4, seed=3)
    assert dropped.leftover == "drop"
    extra = PKSampler(labels, ids_per_batch=4, images_per_id=4, seed=3, leftover="extra_batch")
    for epoch in range(4):
        dropped.set_epoch(epoch)
        extra.set_epoch(epoch)
        a, b = check_epoch(dropped, labels), check_epoch(extra, labels)
        assert len(a) == 1 and len({labels[i] for i in a[0]}) == 4
        assert b[:1] == a and len(b) == 2  # the same walk, plus one batch for the identity left over
        left_over = set(labels) - {labels[i] for i in a[0]}
        assert left_over <= {labels[i] for i in b[1]}
    with pytest.raises(TrainingError, match="leftover"):
        PKSampler(labels, 4, 4, leftover="repeat")


def test_ids_with_enough_images_use_most_of_them_each_epoch():
    labels = layout([12] * 8)  # 3 chunks of 4 per id: at most 8 x 3 / 4 = 6 batches
    sampler = PKSampler(labels, ids_per_batch=4, images_per_id=4, seed=1)
    fractions = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = check_epoch(sampler, labels)
        assert len(batches) <= 6
        fractions.append(len({i for b in batches for i in b}) / len(labels))
    # like CLIP-ReID, chunks left when fewer than P identities remain are dropped, but only a few
    assert np.mean(fractions) > 0.8
    assert max(fractions) == 1.0


def test_same_seed_and_epoch_repeat_exactly_and_epochs_differ():
    labels = layout([6, 5, 9, 4, 8, 7, 5, 6])
    a = PKSampler(labels, 4, 2, seed=5)
    b = PKSampler(labels, 4, 2, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(4)
    assert list(a) != first
    a.set_epoch(3)
    assert list(a) == first  # going back to an epoch reproduces it (resume)
    other_seed = PKSampler(labels, 4, 2, seed=6)
    other_seed.set_epoch(3)
    assert list(other_seed) != first


@pytest.mark.parametrize("world_size", [2, 4])
def test_ddp_shards_are_disjoint_and_union_to_the_single_process_batch(world_size):
    labels = layout([7, 9, 4, 3, 12, 5, 6, 8, 2, 10])
    P, K = 4, 4
    single = PKSampler(labels, P, K, seed=2, rank=0, world_size=1)
    ranks = [PKSampler(labels, P, K, seed=2, rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in range(3):
        for s in [single, *ranks]:
            s.set_epoch(epoch)
        reference = list(single)
        per_rank = [list(s) for s in ranks]
        assert all(len(batches) == len(reference) == len(s) for batches, s in zip(per_rank, ranks))
        for step, global_batch in enumerate(reference):
            shards = [batches[step] for batches in per_rank]
            assert all(len(shard) == P * K // world_size for shard in shards)
            positions = [set(range(r * len(shards[0]), (r + 1) * len(shards[0]))) for r in range(world_size)]
            assert all(not (a & b) for i, a in enumerate(positions) for b in positions[i + 1:])
            assert sum(shards, []) == global_batch  # union in rank order is the global batch, nothing dropped
            # each rank holds whole identities (K divides the shard), so every anchor keeps its positives
            for shard in shards:
                assert set(Counter(labels[i] for i in shard).values()) == {K}


def test_rank_and_world_default_to_single_process_without_torch_distributed():
    sampler = PKSampler(layout([4] * 4), 2, 2)
    assert (sampler.rank, sampler.world_size) == (0, 1)


def test_more_ids_per_batch_than_identities_is_a_clear_error():
    with pytest.raises(TrainingError, match=r"ids_per_batch is 16 .* only 5 identities"):
        PKSampler(layout([4] * 5), ids_per_batch=16, images_per_id=4)


def test_batch_not_divisible_by_world_size_is_a_clear_error():
    with pytest.raises(TrainingError, match=r"3 ids x 3 images = 9 .* 2 processes"):
        PKSampler(layout([4] * 5), ids_per_batch=3, images_per_id=3, rank=0, world_size=2)
    with pytest.raises(TrainingError, match="rank 2 is outside world size 2"):
        PKSampler(layout([4] * 5), ids_per_batch=2, images_per_id=2, rank=2, world_size=2)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 11), min_size=2, max_size=25),
    P=st.integers(2, 8),
    K=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 50),
    world_size=st.sampled_from([1, 2, 4]),
)
@pytest.mark.parametrize("leftover", ["drop", "extra_batch"])
def test_property_random_label_layouts(leftover, counts, P, K, seed, epoch, world_size):
    labels = layout(counts)
    if P > len(counts):
        with pytest.raises(TrainingError):
            PKSampler(labels, P, K, seed=seed, leftover=leftover)
        return
    sampler = PKSampler(labels, P, K, seed=seed, leftover=leftover)
    sampler.set_epoch(epoch)
    reference = check_epoch(sampler, labels)
    if (P * K) % world_size == 0:
        shards = []
        for rank in range(world_size):
            s = PKSampler(labels, P, K, seed=seed, rank=rank, world_size=world_size, leftover=leftover)
            s.set_epoch(epoch)
            shards.append(list(s))
        assert [sum((shard[i] for shard in shards), []) for i in range(len(reference))] == reference
