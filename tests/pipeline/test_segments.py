"""Segments of hand-made label maps whose decomposition is known (docs/method.md §1)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.datasets.base import ClassInfo, ClassMeta
from pipeline.decompose.segments import (candidate_flags, decompose, image_pruning_flags, nearest_indices, normalised_mask,
                               pack_mask, pruning_flags, resize_mask_nearest, segment_query_flags, unpack_mask)

META = ClassMeta("t", 9, (ClassInfo(0, "road", False), ClassInfo(1, "grass", False), ClassInfo(2, "car", True)))


def as_set(segs):
    return {(s.class_id, s.box, s.area, s.source) for s in segs}


def test_diagonal_touch_is_one_component_and_gap_makes_two():
    lab = np.zeros((6, 6), np.int32)
    lab[0:2, 0:2] = 1
    lab[2:4, 2:4] = 1  # touches the first block only at a corner: 8-connected → same segment
    lab[5, 0:6] = 1  # separated by a row of road → its own segment
    segs = [s for s in decompose(lab, None, META, min_area=1) if s.class_id == 1]
    assert as_set(segs) == {(1, (0, 0, 4, 4), 8, "component"), (1, (5, 0, 6, 6), 6, "component")}
    big = next(s for s in segs if s.area == 8)
    expected = np.zeros((4, 4), bool)
    expected[0:2, 0:2] = expected[2:4, 2:4] = True
    assert np.array_equal(big.mask, expected)


def test_two_touching_regions_of_different_classes_stay_apart():
    lab = np.zeros((4, 6), np.int32)
    lab[:, 3:] = 1
    segs = decompose(lab, None, META, min_area=1)
    assert as_set(segs) == {(0, (0, 0, 4, 3), 12, "component"), (1, (0, 3, 4, 6), 12, "component")}


def test_instance_split_across_two_blobs_is_one_segment():
    lab = np.zeros((6, 8), np.int32)
    inst = np.zeros((6, 8), np.int64)
    lab[1:3, 0:2] = 2
    lab[4:6, 5:8] = 2  # same instance, second blob (occluded car)
    inst[1:3, 0:2] = 7
    inst[4:6, 5:8] = 7
    lab[0, 6:8] = 2  # car pixels without an instance id → a component
    segs = [s for s in decompose(lab, inst, META, min_area=1) if s.class_id == 2]
    assert as_set(segs) == {(2, (1, 0, 6, 8), 10, "instance"), (2, (0, 6, 1, 8), 2, "component")}
    car = next(s for s in segs if s.source == "instance")
    assert car.is_thing and car.mask.sum() == 10 and car.mask[0, 0] and car.mask[4, 7] and not car.mask[0, 7]


def test_two_instances_of_one_class_touching_are_two_segments():
    lab = np.full((4, 6), 2, np.int32)
    inst = np.zeros((4, 6), np.int64)
    inst[:, :3], inst[:, 3:] = 1, 2
    segs = decompose(lab, inst, META, min_area=1)
    assert as_set(segs) == {(2, (0, 0, 4, 3), 12, "instance"), (2, (0, 3, 4, 6), 12, "instance")}


def test_things_without_instance_map_are_components():
    lab = np.zeros((5, 5), np.int32)
    lab[0:2, 0:2] = 2
    lab[3:5, 3:5] = 2
    segs = [s for s in decompose(lab, None, META, min_area=1) if s.class_id == 2]
    assert {s.source for s in segs} == {"component"} and len(segs) == 2 and all(s.is_thing for s in segs)


def test_ignore_is_never_a_segment_and_tiny_segments_are_dropped():
    lab = np.full((6, 6), 9, np.int32)  # all void
    lab[0:4, 0:4] = 0  # 16 px road
    lab[5, 5] = 1  # 1 px grass
    segs = decompose(lab, None, META, min_area=16)
    assert as_set(segs) == {(0, (0, 0, 4, 4), 16, "component")}
    assert decompose(np.full((3, 3), 9, np.int32), None, META) == []


def test_nearest_resize_by_hand():
    assert nearest_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_indices(4, 2).tolist() == [1, 3]  # pixel centres 1.0 and 3.0
    assert nearest_indices(3, 3).tolist() == [0, 1, 2]
    m = np.array([[1, 0], [0, 1]], bool)
    assert np.array_equal(resize_mask_nearest(m, 4, 4), np.kron(m, np.ones((2, 2), bool)))
    assert normalised_mask(np.ones((3, 7), bool), 8).all()


def test_pack_mask_is_row_major_packbits():
    m = np.zeros((8, 8), bool)
    m[0, 0] = m[1, 7] = True
    packed = pack_mask(m)
    assert packed.shape == (8,) and packed[0] == 0b10000000 and packed[1] == 0b00000001
    rng = np.random.default_rng(0)
    masks = rng.random((5, 16, 16)) > 0.5
    packed = np.stack([pack_mask(x) for x in masks])
    assert np.array_equal(unpack_mask(packed, 16), masks)


def test_candidate_flags_keep_largest_until_ratio():
    cls = np.array([0, 0, 0, 0, 1, 1, 0])
    area = np.array([30, 50, 5, 15, 10, 10, 99])
    in_db = np.array([1, 1, 1, 1, 1, 1, 0], bool)  # last row is a val segment
    flags = candidate_flags(cls, area, in_db, 0.9)
    # class 0 in the DB: 50, 30, 15, 5 (total 100): running totals before 0, 50, 80, 95 → the 15 takes it to 95 ≥ 90.
    # class 1: 10 + 10, running totals before 0 and 10, both < 18 → both kept.
    assert flags.tolist() == [True, True, False, True, True, True, False]
    # tie at equal areas: the lower row comes first and is the one kept (before 0 < 10; before 10 is not)
    assert candidate_flags(np.array([1, 1]), np.array([10, 10]), np.ones(2, bool), 0.5).tolist() == [True, False]
    assert candidate_flags(cls, area, in_db, 1.0).tolist() == [True] * 6 + [False]


@pytest.mark.parametrize("seed", range(3))
def test_segments_partition_the_labelled_pixels(seed):
    from tests.fixtures.toy_dataset import toy_label_map

    lab, inst = toy_label_map(np.random.default_rng(seed))
    meta = ClassMeta("toy", 255, tuple(ClassInfo(i, str(i), i >= 3) for i in range(5)))
    segs = decompose(lab.astype(np.int32), inst.astype(np.int64), meta, min_area=1)
    cover = np.zeros(lab.shape, int)
    for s in segs:
        y0, x0, y1, x1 = s.box
        cover[y0:y1, x0:x1] += s.mask
        assert np.all(lab[y0:y1, x0:x1][s.mask] == s.class_id)
        assert s.mask.any(axis=0)[[0, -1]].all() and s.mask.any(axis=1)[[0, -1]].all()  # tight box
    assert np.array_equal(cover, (lab != 255).astype(int))


# ------------------------------------------------------------------ per-image pruning
def pruning_map_1() -> np.ndarray:
    """Grass (1) components of 50, 30, 15 and 5 px, car (2) components of 12 and 4 px, road (0) 1 px."""
    lab = np.full((15, 10), 9, np.int32)
    lab[0:5, 0:10] = 1  # 50
    lab[6:9, 0:10] = 1  # 30
    lab[10:13, 0:5] = 1  # 15
    lab[14, 0:5] = 1  # 5
    lab[10:13, 6:10] = 2  # 12
    lab[14, 6:10] = 2  # 4
    lab[5, 5] = 0  # a lone road pixel: the whole class in this image, always kept
    return lab


def pruning_map_2() -> np.ndarray:
    lab = np.full((3, 8), 9, np.int32)
    lab[0, 0:5] = 1  # one 5-px grass segment: all of grass in this image
    return lab


def _rows(maps):
    segs = [(k, s) for k, m in enumerate(maps) for s in decompose(m, None, META, min_area=1)]
    return [k for k, _ in segs], [s.class_id for _, s in segs], [s.area for _, s in segs]


def test_per_image_pruning_on_a_hand_made_map():
    keys, cls, area = _rows([pruning_map_1(), pruning_map_2()])
    got = image_pruning_flags(keys, cls, area, 0.9)
    # Hand-computed, ratio 0.9. Image 1 grass: total 100, keep while the area before < 90:
    # 50 (0), 30 (50), 15 (80) kept, 5 (95) pruned. Car: total 16, 12 (0) and 4 (12 < 14.4) kept.
    # Road: 1 px kept. Image 2 grass: its only segment covers 100 % → kept.
    expected = {(0, 0, 1): True, (0, 1, 50): True, (0, 1, 30): True, (0, 1, 15): True, (0, 1, 5): False,
                (0, 2, 12): True, (0, 2, 4): True, (1, 1, 5): True}
    assert dict(zip(zip(keys, cls, area), got.tolist())) == expected
    # ratio 0.5: grass keeps 50 only (30 starts at 50, not < 50); car keeps 12 only (4 starts at 12 ≥ 8)
    got = image_pruning_flags(keys, cls, area, 0.5)
    assert [a for a, f, c in zip(area, got, cls) if f and c != 0] == [50, 12, 5]


def test_pruning_modes_differ_as_documented():
    keys, cls, area = _rows([pruning_map_1(), pruning_map_2()])
    in_db = np.array([k == 0 for k in keys])  # image 1 is the training split, image 2 a query image
    cand, query = pruning_flags("image", keys, cls, area, in_db, 0.9)
    assert query.tolist() == image_pruning_flags(keys, cls, area, 0.9).tolist()
    assert (cand == (query & in_db)).all() and query[-1] and not cand[-1]
    cand, query = pruning_flags("dataset", keys, cls, area, in_db, 0.9)
    assert query.all() and (cand == candidate_flags(cls, area, in_db, 0.9)).all()
    cand, query = pruning_flags("none", keys, cls, area, in_db, 0.9)
    assert query.all() and (cand == in_db).all()
    with pytest.raises(ValueError, match="pruning"):
        pruning_flags("per-class", keys, cls, area, in_db, 0.9)


def test_per_image_pruning_equals_a_brute_force_loop():
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 4, 300)
    cls = rng.integers(0, 3, 300)
    area = rng.integers(1, 40, 300)
    for ratio in (0.3, 0.9, 1.0):
        expected = np.zeros(300, bool)
        for k in range(4):
            for c in range(3):
                rows = [i for i in range(300) if keys[i] == k and cls[i] == c]
                rows.sort(key=lambda i: (-area[i], i))
                total, done = sum(area[i] for i in rows), 0
                for i in rows:
                    expected[i] = done < ratio * total
                    done += area[i]
        assert (image_pruning_flags(keys, cls, area, ratio) == expected).all(), ratio


def test_segment_query_flags_match_the_database_rule():
    segs = decompose(pruning_map_1(), None, META, min_area=1)
    flags = segment_query_flags(segs, "image", 0.9)
    assert [s.area for s, f in zip(segs, flags) if not f] == [5]
    assert segment_query_flags(segs, "dataset", 0.9).all()
