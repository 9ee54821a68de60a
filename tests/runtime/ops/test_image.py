"""Resizing, cropping, resampling and box suppression on the executor: the MIL specification's own
worked examples, and torch's interpolation and grid sampling where they define the same grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimes.mil import UnsupportedOperation
from tests.runtime.ops.oracle import BOTH_PRECISIONS, arrays, close

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
SOME = settings(max_examples=10, deadline=None)

# resize_bilinear's documented grid points for an input [0, 1] (Xin = 2): the output is the grid
DOCUMENTED_GRIDS = {
    ("UNALIGN_CORNERS", 5): [0.0, 0.1, 0.5, 0.9, 1.0],
    ("STRICT_ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
    ("ALIGN_CORNERS", 5): [0.0, 0.25, 0.5, 0.75, 1.0],
    ("DEFAULT", 5): [0.0, 0.4, 0.8, 1.0, 1.0],
    ("OFFSET_CORNERS", 5): [0.1, 0.3, 0.5, 0.7, 0.9],
    ("UNALIGN_CORNERS", 6): [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0],
    ("STRICT_ALIGN_CORNERS", 6): [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    ("DEFAULT", 6): [0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0],
    ("OFFSET_CORNERS", 6): [1 / 12, 0.25, 5 / 12, 7 / 12, 0.75, 11 / 12],
}


@pytest.mark.parametrize("mode, size", sorted(DOCUMENTED_GRIDS))
@BOTH_PRECISIONS
def test_resize_bilinear_samples_the_documented_grid(run_mil, dtype, mode, size):
    x = np.array([0.0, 1.0], dtype).reshape(1, 1, 1, 2)
    (out,) = run_mil(lambda x: mb.resize_bilinear(x=x, target_size_height=1, target_size_width=size,
                                                  sampling_mode=mode), {"x": x})
    close(out[0, 0, 0], DOCUMENTED_GRIDS[mode, size])


@pytest.mark.parametrize("mode, align_corners", [("STRICT_ALIGN_CORNERS", True), ("UNALIGN_CORNERS", False)])
@BOTH_PRECISIONS
@SOME
@given(st.integers(2, 6), st.integers(2, 6), st.integers(1, 9), st.integers(1, 9), st.data())
def test_resize_bilinear_matches_torch(run_mil, dtype, mode, align_corners, h, w, out_h, out_w, data):
    x = data.draw(arrays((1, 2, h, w), dtype))
    (out,) = run_mil(lambda x: mb.resize_bilinear(x=x, target_size_height=out_h, target_size_width=out_w,
                                                  sampling_mode=mode), {"x": x})
    ref = F.interpolate(torch.from_numpy(x.astype(np.float64)), size=(out_h, out_w), mode="bilinear",
                        align_corners=align_corners)
    close(out, ref.numpy(), scale=4)


@BOTH_PRECISIONS
@SOME
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9), st.data())
def test_nearest_neighbor_resizes_match_torch(run_mil, dtype, h, w, out_h, out_w, data):
    """resize_nearest_neighbor reads the input pixel holding each output pixel's centre (torch's
    nearest-exact: 2 -> 3 reads 0, 1, 1 and 4 -> 2 reads 1, 3); upsample_nearest_neighbor reads
    floor(i / scale) (torch's nearest). They differ wherever the scale is not a whole upscaling."""
    x = data.draw(arrays((2, 1, h, w), dtype))
    scale_h, scale_w = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    resized, upsampled = run_mil(lambda x: [
        mb.resize_nearest_neighbor(x=x, target_size_height=out_h, target_size_width=out_w),
        mb.upsample_nearest_neighbor(x=x, scale_factor_height=scale_h, scale_factor_width=scale_w)], {"x": x})
    t = torch.from_numpy(x.astype(np.float64))
    np.testing.assert_array_equal(resized, F.interpolate(t, size=(out_h, out_w), mode="nearest-exact").numpy())
    np.testing.assert_array_equal(upsampled, F.interpolate(t, scale_factor=(scale_h, scale_w), mode="nearest").numpy())


@pytest.mark.parametrize("align_corners", [True, False])
@BOTH_PRECISIONS
@SOME
@given(st.integers(2, 5), st.integers(2, 5), st.integers(1, 3), st.integers(1, 3), st.data())
def test_upsample_bilinear_matches_torch(run_mil, dtype, align_corners, h, w, scale_h, scale_w, data):
    x = data.draw(arrays((1, 1, h, w), dtype))
    (out,) = run_mil(lambda x: mb.upsample_bilinear(x=x, scale_factor_height=scale_h, scale_factor_width=scale_w,
                                                    align_corners=align_corners), {"x": x})
    ref = F.interpolate(torch.from_numpy(x.astype(np.float64)), scale_factor=(scale_h, scale_w), mode="bilinear",
                        align_corners=align_corners)
    close(out, ref.numpy(), scale=4)


@pytest.mark.parametrize("size_in, size_out, rows", [(2, 3, [0, 1, 1]), (4, 2, [1, 3]), (3, 5, [0, 0, 1, 2, 2]),
                                                      (2, 4, [0, 0, 1, 1]), (5, 3, [0, 2, 4])])
def test_nearest_neighbor_resize_reads_the_pixel_under_each_output_centre(run_mil, size_in, size_out, rows):
    """The scales where floor((i + 0.5) · in / out) and floor(i · in / out) differ, and one where they agree."""
    x = np.arange(size_in, dtype=np.float32).reshape(1, 1, size_in, 1)
    static, dynamic = run_mil(lambda x, s: [
        mb.resize(x=x, shape=np.array([1, 1, size_out, 1], np.int32), resized_dims=np.uint32(2),
                  interpolation_mode="NEAREST_NEIGHBOR"),
        mb.resize(x=x, shape=s, resized_dims=np.uint32(2), interpolation_mode="NEAREST_NEIGHBOR")],
        {"x": x, "s": np.array([1, 1, size_out, 1], np.int32)})
    np.testing.assert_array_equal(static.ravel(), rows)
    np.testing.assert_array_equal(dynamic.ravel(), rows)


def test_upsample_at_a_fractional_scale_reads_at_the_scale_of_the_sizes(run_mil):
    """Apple's iOS15 test of fractional scales: 1 x 3 at (3.17, 0.67) is 3 x 2 reading columns 0, 1;
    at (2.0, 1.12) it is 2 x 3 reading columns 0, 1, 2 (floor(i / 1.12) would read 0, 0, 1)."""
    x = np.array([1.5, -2.5, 3.5], np.float32).reshape(1, 1, 1, 3)
    same, shrunk, widened = run_mil(lambda x: [
        mb.upsample_nearest_neighbor(x=x, scale_factor_height=1.0, scale_factor_width=1.0),
        mb.upsample_nearest_neighbor(x=x, scale_factor_height=3.17, scale_factor_width=0.67),
        mb.upsample_nearest_neighbor(x=x, scale_factor_height=2.0, scale_factor_width=1.12)], {"x": x}, opset="iOS15")
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(shrunk, np.array([1.5, -2.5] * 3, np.float32).reshape(1, 1, 3, 2))
    np.testing.assert_array_equal(widened, np.array([1.5, -2.5, 3.5] * 2, np.float32).reshape(1, 1, 2, 3))


@pytest.mark.parametrize("pad", [0.0, 10.0])
def test_crop_resize_reads_the_pad_value_wherever_it_samples_outside_the_image(run_mil, pad):
    """Apple's iOS16 crop_resize test: a box from row 0.3 to 3.9 of a 4-row image (normalized 0.1 to
    1.3) samples row 3.9 as the pad value, not a blend of it with row 3."""
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    roi = np.array([[0, 0.1, 0.3, 1.3, 1], [0, 0.0, 0.4, 0.6, 0.7]], np.float32).reshape(2, 1, 5, 1, 1)
    (out,) = run_mil(lambda x: mb.crop_resize(x=x, roi=roi, target_width=2, target_height=2,
                                              normalized_coordinates=True, sampling_mode="ALIGN_CORNERS",
                                              pad_value=pad), {"x": x}, opset="iOS16")
    np.testing.assert_allclose(out.ravel(), [3.1, 5.2, pad, pad, 2.2, 3.1, 9.4, 10.3], rtol=1e-5)


def test_resize_takes_its_sizes_from_the_end_of_shape(run_mil):
    """The iOS17 op's documented examples: nearest neighbour 2 -> 3 rows (Apple's op test
    ``TestResize.test_resize_nearest_neighbor``: rows 0, 1, 1, each twice across), linear on a 1-D grid."""
    x = np.array([-6.174, 9.371], np.float32).reshape(1, 1, 2, 1)
    ramp = np.array([0.0, 1.0], np.float32).reshape(1, 1, 1, 2)
    nearest, linear, kept = run_mil(lambda x, r: [
        mb.resize(x=x, shape=np.array([1, 1, 3, 2], np.int32), resized_dims=np.uint32(2),
                  interpolation_mode="NEAREST_NEIGHBOR", sampling_mode="DEFAULT"),
        mb.resize(x=r, shape=np.array([3, 1, 5], np.int32), resized_dims=np.uint32(2), interpolation_mode="LINEAR",
                  sampling_mode="DEFAULT"),
        mb.resize(x=r, shape=np.array([0, 4], np.int32), resized_dims=np.uint32(2), interpolation_mode="LINEAR",
                  sampling_mode="STRICT_ALIGN_CORNERS")], {"x": x, "r": ramp})
    np.testing.assert_allclose(nearest.ravel(), [-6.174, -6.174, 9.371, 9.371, 9.371, 9.371], rtol=1e-6)
    np.testing.assert_allclose(linear.ravel(), [0, 0.4, 0.8, 1, 1], rtol=1e-6)
    assert kept.shape == (1, 1, 1, 4)  # a 0 keeps the axis' size
    np.testing.assert_allclose(kept.ravel(), [0, 1 / 3, 2 / 3, 1], rtol=1e-6)


IMAGE = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)


@pytest.mark.parametrize("roi, size, normalized, expected", [
    # the worked examples of crop_resize's specification tests, ALIGN_CORNERS
    ([1, 1, 2, 2], 2, False, [6, 7, 10, 11]),
    ([1, 1, 2, 2], 4, False, [6, 19 / 3, 20 / 3, 7, 22 / 3, 23 / 3, 8, 25 / 3, 26 / 3, 9, 28 / 3, 29 / 3, 10, 31 / 3,
                              32 / 3, 11]),
    ([1, 1, 2, 2], 1, False, [8.5]),
    ([0, 0, 0, 1 / 3, 1 / 3], 2, True, [1, 2, 5, 6]),
    ([2, 2, 1, 1], 2, False, [11, 10, 7, 6]),
])
def test_crop_resize_worked_examples(run_mil, roi, size, normalized, expected):
    roi = np.array(roi, np.float32).reshape(1, 1, -1, 1, 1)
    (out,) = run_mil(lambda x: mb.crop_resize(x=x, roi=roi, target_height=size, target_width=size,
                                              normalized_coordinates=normalized, sampling_mode="ALIGN_CORNERS",
                                              box_coordinate_mode="CORNERS_HEIGHT_FIRST"), {"x": IMAGE},
                     opset="iOS15")
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-6)


def test_crop_resize_iOS17_boxes_pick_their_images_and_pad_outside(run_mil):
    images = np.stack([IMAGE[0], 100 + IMAGE[0]])
    boxes = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4]], np.float32)  # the last reaches past the edge
    (out,) = run_mil(lambda x: mb.crop_resize(x=x, boxes=boxes, box_indices=np.array([1, 0, 0], np.int32),
                                              target_height=2, target_width=2, sampling_mode="ALIGN_CORNERS",
                                              pad_value=np.float32(-1)), {"x": images})
    assert out.shape == (3, 1, 2, 2)
    np.testing.assert_array_equal(out[0].ravel(), [106, 107, 110, 111])
    np.testing.assert_array_equal(out[1].ravel(), [6, 7, 10, 11])
    np.testing.assert_array_equal(out[2].ravel(), [16, -1, -1, -1])


def test_crop_resize_refuses_grids_the_specification_leaves_open_for_boxes(run_mil):
    with pytest.raises(UnsupportedOperation, match="sampling_mode.*not over a box"):
        run_mil(lambda x: mb.crop_resize(x=x, boxes=np.array([[0, 0, 1, 1]], np.float32), target_height=2,
                                         target_width=2, sampling_mode="DEFAULT"), {"x": IMAGE})


# torch's grid_sample pads the same ways: its reflection about the edge pixels' centres (with
# align_corners) is MIL's "reflection", about the image edges (without) MIL's "symmetric"
GRID_SAMPLE_PADDING = [("constant", "zeros", True), ("constant", "zeros", False), ("border", "border", False),
                       ("reflection", "reflection", True), ("symmetric", "reflection", False)]


@pytest.mark.parametrize("padding, torch_padding, align_corners", GRID_SAMPLE_PADDING)
@pytest.mark.parametrize("sampling", ["bilinear", "nearest"])
@BOTH_PRECISIONS
@SOME
@given(st.integers(2, 5), st.integers(2, 5), st.integers(1, 4), st.data())
def test_resample_matches_torch_grid_sample(run_mil, dtype, sampling, padding, torch_padding, align_corners,
                                            h, w, out_size, data):
    x = data.draw(arrays((2, 2, h, w), dtype))
    # away from the exact midpoints between pixels, where "nearest" may round either way
    coordinates = data.draw(arrays((2, out_size, out_size, 2), np.float32, -1.5, 1.5))
    if sampling == "nearest":
        pixel = ((coordinates.astype(np.float64) + 1) / 2 * (np.array([w, h]) - 1) if align_corners
                 else ((coordinates.astype(np.float64) + 1) * np.array([w, h]) - 1) / 2)
        coordinates = np.where(np.abs(pixel - np.floor(pixel) - 0.5) < 1e-3, coordinates + 1e-2, coordinates)
    (out,) = run_mil(lambda x, c: mb.resample(x=x, coordinates=c, sampling_mode=sampling, padding_mode=padding,
                                              padding_value=dtype(0), coordinates_mode="normalized_minus_one_to_one",
                                              align_corners=align_corners), {"x": x, "c": coordinates})
    ref = F.grid_sample(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(coordinates.astype(np.float64)),
                        mode=sampling, padding_mode=torch_padding, align_corners=align_corners)
    close(out, ref.numpy(), scale=4)


@BOTH_PRECISIONS
@SOME
@given(st.integers(2, 5), st.integers(2, 5), st.integers(1, 5), st.integers(1, 5), st.data())
def test_affine_matches_torch_affine_grid(run_mil, dtype, h, w, out_h, out_w, data):
    x = data.draw(arrays((2, 1, h, w), dtype))
    matrix = data.draw(arrays((2, 6), dtype, -1.5, 1.5))
    (out,) = run_mil(lambda x, m: mb.affine(x=x, transform_matrix=m, output_height=out_h, output_width=out_w,
                                            sampling_mode="bilinear", padding_mode="constant", padding_value=dtype(0),
                                            coordinates_mode="normalized_minus_one_to_one", align_corners=True),
                     {"x": x, "m": matrix})
    theta = torch.from_numpy(matrix.astype(np.float64)).reshape(2, 2, 3)
    grid = F.affine_grid(theta, [2, 1, out_h, out_w], align_corners=True)
    ref = F.grid_sample(torch.from_numpy(x.astype(np.float64)), grid, align_corners=True)
    close(out, ref.numpy(), scale=8)


# three boxes (x, y, w, h): 0 and 1 overlap by IoU 0.6, 2 stands apart; scores per class
BOXES = np.array([[[0.5, 0.5, 1.0, 1.0], [0.5, 0.75, 1.0, 1.0], [3.0, 3.0, 1.0, 1.0]]], np.float32)
SCORES = np.array([[[0.9, 0.0], [0.0, 0.8], [0.3, 0.1]]], np.float32)


@pytest.mark.parametrize("iou, threshold, per_class, kept", [
    (0.5, 0.0, False, [0, 2]),      # 1 overlaps the better 0 by more than 0.5
    (0.7, 0.0, False, [0, 1, 2]),   # 0.6 is not above 0.7
    (0.5, 0.0, True, [0, 1, 2]),    # 0 and 1 are of different classes
    (0.5, 0.35, False, [0]),        # 2's best score 0.3 is not above 0.35
])
def test_non_maximum_suppression_keeps_the_best_of_overlapping_boxes(run_mil, iou, threshold, per_class, kept):
    boxes_out, scores_out, indices, counts = run_mil(lambda b, s: list(mb.non_maximum_suppression(
        boxes=b, scores=s, iou_threshold=np.float32(iou), score_threshold=np.float32(threshold), max_boxes=4,
        per_class_suppression=per_class)), {"b": BOXES, "s": SCORES}, opset="iOS15")
    assert indices[0].tolist() == kept + [-1] * (4 - len(kept)) and counts.tolist() == [len(kept)]
    np.testing.assert_array_equal(boxes_out[0, :len(kept)], BOXES[0, kept])
    np.testing.assert_array_equal(scores_out[0, :len(kept)], SCORES[0, kept])
    assert not boxes_out[0, len(kept):].any() and not scores_out[0, len(kept):].any()
    late = run_mil(lambda b, s: list(mb.non_maximum_suppression(
        boxes=b, scores=s, iou_threshold=np.float32(iou), max_boxes=4, per_class_suppression=per_class)),
        {"b": np.swapaxes(BOXES, 1, 2).copy(), "s": np.swapaxes(SCORES, 1, 2).copy()}, opset="iOS17")
    if threshold == 0.0:  # iOS17 has no score threshold and puts the boxes last
        assert len(late) == 3 and late[2].tolist() == indices.tolist()
        np.testing.assert_array_equal(late[0], np.swapaxes(boxes_out, 1, 2))
