"""Image ops: resizing, cropping, resampling at coordinates, and non-maximum suppression of boxes.

Interpolation is separable: each resized axis is sampled at a grid of (fractional) input
positions, built from the op's sampling mode as the MIL specification writes it, and a position
between two pixels mixes them linearly.
"""

from __future__ import annotations

import numpy as np

from runtimes.mil.ops.base import Unsupported, kernel


def _grid(size_in: int, size_out: int, mode: str) -> np.ndarray:
    """Input positions sampled for each output position of one axis (resize_bilinear's modes)."""
    i = np.arange(size_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size_out == 1:
            points = np.full(1, (size_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0)
        else:
            points = i * (size_in - 1) / (size_out - 1)
    elif mode == "DEFAULT":
        points = i * size_in / size_out
    elif mode == "OFFSET_CORNERS":
        delta = max(1, size_in - 1) / size_out
        points = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        spacing = size_in / size_out
        points = i * spacing + 0.5 * spacing - 0.5
    else:
        raise Unsupported("sampling_mode", f"{mode!r} is not one of STRICT_ALIGN_CORNERS, ALIGN_CORNERS, DEFAULT, "
                                           "OFFSET_CORNERS, UNALIGN_CORNERS")
    return np.clip(points, 0, size_in - 1)


def _linear_along(x, axis: int, points: np.ndarray):
    """``x`` sampled along ``axis`` at in-range fractional ``points``."""
    low = np.floor(points).astype(np.int64)
    high = np.minimum(low + 1, x.shape[axis] - 1)
    weight = (points - low).reshape([-1 if a == axis % x.ndim else 1 for a in range(x.ndim)])
    return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight


def _nearest_along(x, axis: int, size_out: int):
    """Output position i reads input floor(i · size_in / size_out): ``upsample_nearest_neighbor``'s
    rule (TensorFlow's nearest neighbour without half-pixel centres, and PyTorch's ``nearest``)."""
    index = np.arange(size_out, dtype=np.int64) * x.shape[axis] // size_out  # in integers: no rounding at i · in / out
    return np.take(x, np.minimum(index, x.shape[axis] - 1), axis=axis)


def _nearest_half_pixel_along(x, axis: int, size_out: int):
    """Output position i reads input floor((i + 0.5) · size_in / size_out), the pixel whose extent
    holds the output pixel's centre: the rule of ``resize_nearest_neighbor`` and of iOS17's
    ``resize`` with NEAREST_NEIGHBOR. coremltools converts TensorFlow's nearest-neighbour resize
    with half-pixel centres to exactly these two ops (and the one without to
    ``upsample_nearest_neighbor``), and the worked example of Apple's iOS17 resize test reads
    rows 0, 1, 1 for 2 -> 3, where floor(i · 2 / 3) would read 0, 0, 1."""
    size_in = x.shape[axis]
    index = np.floor((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64)
    return np.take(x, np.minimum(index, size_in - 1), axis=axis)


@kernel("resize_bilinear")
def resize_bilinear(x, target_size_height=1, target_size_width=1, sampling_mode="DEFAULT"):
    y = _linear_along(x, -2, _grid(x.shape[-2], int(target_size_height), sampling_mode))
    return _linear_along(y, -1, _grid(x.shape[-1], int(target_size_width), sampling_mode))


@kernel("resize_nearest_neighbor")
def resize_nearest_neighbor(x, target_size_height, target_size_width):
    return _nearest_half_pixel_along(_nearest_half_pixel_along(x, -2, int(target_size_height)), -1,
                                     int(target_size_width))


@kernel("upsample_nearest_neighbor")
def upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1):
    """The output has floor(size · scale) pixels and reads them at the scale those sizes make: a
    width of 3 at scale 1.12 is 3 pixels reading 0, 1, 2, not floor(i / 1.12) (Apple's iOS15 test
    of fractional scales)."""
    y = _nearest_along(x, -2, int(np.floor(x.shape[-2] * float(scale_factor_height))))
    return _nearest_along(y, -1, int(np.floor(x.shape[-1] * float(scale_factor_width))))


@kernel("upsample_bilinear")
def upsample_bilinear(x, scale_factor_height=1, scale_factor_width=1, align_corners=True, half_pixel_centers=None):
    """``align_corners`` samples corner to corner; otherwise half-pixel centres (the default) or,
    with ``half_pixel_centers=False`` (iOS16), positions i · in / out."""
    half_pixel = not align_corners if half_pixel_centers is None else bool(half_pixel_centers)
    if align_corners and half_pixel:
        raise Unsupported("half_pixel_centers", "True together with align_corners=True is not a grid MIL defines")
    mode = "STRICT_ALIGN_CORNERS" if align_corners else "UNALIGN_CORNERS" if half_pixel else "DEFAULT"
    y = x
    for axis, scale in ((-2, scale_factor_height), (-1, scale_factor_width)):
        size_out = int(np.floor(x.shape[axis] * float(scale)))
        y = _linear_along(y, axis, _grid(x.shape[axis], size_out, mode))
    return y


@kernel("resize")
def resize(x, shape, resized_dims, interpolation_mode="LINEAR", sampling_mode="DEFAULT"):
    """iOS17: the last ``resized_dims`` axes of ``x`` take their sizes from the end of ``shape``
    (0 keeps the size of the matching axis of ``x``)."""
    n = int(resized_dims)
    targets = [int(s) for s in np.ravel(shape)][len(np.ravel(shape)) - n:]
    y = x
    for k, target in enumerate(targets):
        axis = x.ndim - n + k
        size_out = x.shape[axis] if target == 0 else target
        if interpolation_mode == "LINEAR":
            y = _linear_along(y, axis, _grid(x.shape[axis], size_out, sampling_mode))
        elif interpolation_mode == "NEAREST_NEIGHBOR":
            if sampling_mode != "DEFAULT":
                raise Unsupported("sampling_mode", f"{sampling_mode!r} with NEAREST_NEIGHBOR: the specification "
                                                   "defines its sampling modes for LINEAR only")
            y = _nearest_half_pixel_along(y, axis, size_out)
        else:
            raise Unsupported("interpolation_mode", f"{interpolation_mode!r} is not one of LINEAR, NEAREST_NEIGHBOR")
    return y


# ---- sampling at coordinates -------------------------------------------------------------------

def _padded_index(index, size: int, mode: str):
    """Indices of an image padded by ``mode``: (index into the image, whether it is inside)."""
    if mode == "constant":
        return np.clip(index, 0, size - 1), (index >= 0) & (index < size)
    if mode == "border":
        return np.clip(index, 0, size - 1), np.ones(index.shape, bool)
    if mode == "reflection":  # about the edge pixels' centres: |1 2 3| -> 3 2 |1 2 3| 2 1
        period = max(2 * (size - 1), 1)
        folded = np.mod(index, period)
        return np.where(folded < size, folded, period - folded), np.ones(index.shape, bool)
    if mode == "symmetric":  # about the image's edges: |1 2 3| -> 2 1 |1 2 3| 3 2
        folded = np.mod(index, 2 * size)
        return np.where(folded < size, folded, 2 * size - 1 - folded), np.ones(index.shape, bool)
    raise Unsupported("padding_mode", f"{mode!r} is not one of constant, border, reflection, symmetric")


def _pixel_positions(coordinate, size: int, coordinates_mode: str, align_corners: bool):
    if coordinates_mode == "unnormalized":
        return coordinate
    if coordinates_mode == "normalized_minus_one_to_one":
        unit = (coordinate + 1) / 2
    elif coordinates_mode == "normalized_zero_to_one":
        unit = coordinate
    else:
        raise Unsupported("coordinates_mode", f"{coordinates_mode!r} is not one of unnormalized, "
                                              "normalized_minus_one_to_one, normalized_zero_to_one")
    return unit * (size - 1) if align_corners else unit * size - 0.5


def _sample(x, px, py, sampling_mode, padding_mode, padding_value):
    """``x`` (B, C, H, W) at pixel positions ``px``, ``py`` (B, H2, W2): (B, C, H2, W2)."""
    height, width = x.shape[-2:]
    batch = np.arange(x.shape[0])[:, None, None]

    def at(iy, ix):
        ry, inside_y = _padded_index(iy, height, padding_mode)
        rx, inside_x = _padded_index(ix, width, padding_mode)
        values = np.moveaxis(x[batch, :, ry, rx], -1, 1)  # (B, C, H2, W2)
        return np.where((inside_y & inside_x)[:, None], values, padding_value)

    if sampling_mode == "nearest":
        return at(np.floor(py + 0.5).astype(np.int64), np.floor(px + 0.5).astype(np.int64))
    if sampling_mode != "bilinear":
        raise Unsupported("sampling_mode", f"{sampling_mode!r} is not one of bilinear, nearest")
    y0, x0 = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
    wy, wx = (py - y0)[:, None], (px - x0)[:, None]
    return (at(y0, x0) * (1 - wy) * (1 - wx) + at(y0, x0 + 1) * (1 - wy) * wx
            + at(y0 + 1, x0) * wy * (1 - wx) + at(y0 + 1, x0 + 1) * wy * wx)


@kernel("resample")
def resample(x, coordinates, sampling_mode="bilinear", padding_mode="constant", padding_value=0.0,
             coordinates_mode="normalized_minus_one_to_one", align_corners=False):
    coordinates = np.asarray(coordinates, np.float64)
    height, width = x.shape[-2:]
    px = _pixel_positions(coordinates[..., 0], width, coordinates_mode, bool(align_corners))
    py = _pixel_positions(coordinates[..., 1], height, coordinates_mode, bool(align_corners))
    return _sample(x, px, py, sampling_mode, padding_mode, padding_value)


@kernel("affine")
def affine(x, transform_matrix, output_height, output_width, sampling_mode="bilinear", padding_mode="constant",
           padding_value=0.0, coordinates_mode="normalized_minus_one_to_one", align_corners=True):
    """Output pixel (x, y), in [-1, 1] corner to corner, reads input position
    (a0·x + a1·y + a2, b0·x + b1·y + b2): the only coordinates the specification allows."""
    if coordinates_mode != "normalized_minus_one_to_one" or not align_corners:
        raise Unsupported("coordinates_mode", "affine is defined for normalized_minus_one_to_one with "
                                              f"align_corners=True; got {coordinates_mode!r}, {align_corners}")
    gx, gy = np.meshgrid(_corner_to_corner(int(output_width)), _corner_to_corner(int(output_height)))
    m = np.broadcast_to(np.asarray(transform_matrix, np.float64), (x.shape[0], 6))[:, :, None, None]
    coordinates = np.stack([m[:, 0] * gx + m[:, 1] * gy + m[:, 2], m[:, 3] * gx + m[:, 4] * gy + m[:, 5]], axis=-1)
    return resample(x, coordinates, sampling_mode, padding_mode, padding_value, coordinates_mode, True)


def _corner_to_corner(count: int) -> np.ndarray:
    """``count`` points from -1 to 1; a single output pixel sits at the centre, 0."""
    return np.linspace(-1, 1, count) if count > 1 else np.zeros(count)


# ---- boxes -------------------------------------------------------------------------------------

_BOX_MODES = ("CORNERS_HEIGHT_FIRST", "CORNERS_WIDTH_FIRST", "CENTER_SIZE_HEIGHT_FIRST", "CENTER_SIZE_WIDTH_FIRST")


def _box_corners(box, mode):
    """(h_start, w_start, h_end, w_end) of one box given in ``mode``."""
    a, b, c, d = (float(v) for v in box)
    if mode == "CORNERS_HEIGHT_FIRST":
        return a, b, c, d
    if mode == "CORNERS_WIDTH_FIRST":
        return b, a, d, c
    if mode == "CENTER_SIZE_HEIGHT_FIRST":
        return a - c / 2, b - d / 2, a + c / 2, b + d / 2
    if mode == "CENTER_SIZE_WIDTH_FIRST":
        return b - d / 2, a - c / 2, b + d / 2, a + c / 2
    raise Unsupported("box_coordinate_mode", f"{mode!r} is not one of {', '.join(_BOX_MODES)}")


def _box_grid(start, end, count, mode):
    if mode not in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        raise Unsupported("sampling_mode", f"{mode!r}: the specification defines this grid over a whole axis, not "
                                           "over a box (implemented: STRICT_ALIGN_CORNERS, ALIGN_CORNERS)")
    if count == 1:
        return np.array([(start + end) / 2 if mode == "ALIGN_CORNERS" else start])
    return start + np.arange(count) * (end - start) / (count - 1)


def _crop_one(image, box, height, width, normalized, spatial_scale, box_mode, sampling_mode, pad_value):
    """One (C, height, width) crop of ``image`` (C, H, W), bilinear between the pixels around each
    sampling position; a position outside the image (beyond its edge pixels' centres) reads
    ``pad_value`` whole, not a blend of it with the edge (Apple's iOS16 crop_resize test: row 3.9 of a
    4-row image reads the pad value)."""
    h0, w0, h1, w1 = _box_corners(box, box_mode)
    size_h, size_w = image.shape[-2:]
    if normalized:
        h0, h1, w0, w1 = h0 * (size_h - 1), h1 * (size_h - 1), w0 * (size_w - 1), w1 * (size_w - 1)
    h0, h1, w0, w1 = (v * float(spatial_scale) for v in (h0, h1, w0, w1))
    py = _box_grid(h0, h1, height, sampling_mode)[:, None] * np.ones(width)
    px = _box_grid(w0, w1, width, sampling_mode)[None, :] * np.ones((height, 1))
    crop = _sample(image[None], px[None], py[None], "bilinear", "border", pad_value)[0]
    return np.where((py < 0) | (py > size_h - 1) | (px < 0) | (px > size_w - 1), pad_value, crop)


@kernel("crop_resize")
def crop_resize(x, roi=None, boxes=None, box_indices=None, target_height=1, target_width=1,
                normalized_coordinates=False, spatial_scale=1.0, box_coordinate_mode="CORNERS_HEIGHT_FIRST",
                sampling_mode="DEFAULT", pad_value=0.0):
    """iOS15/16 take ``roi`` (N, 1, 4 or 5, 1, 1) and return (N, B or 1, C, h, w); iOS17 takes
    ``boxes`` (N, 4) and ``box_indices`` and returns (N, C, h, w)."""
    options = (int(target_height), int(target_width), bool(normalized_coordinates), spatial_scale,
               box_coordinate_mode, sampling_mode, pad_value)
    if boxes is not None:
        indices = np.arange(len(boxes)) if box_indices is None else np.asarray(box_indices, np.int64)
        return np.stack([_crop_one(x[i], box, *options) for i, box in zip(indices, np.asarray(boxes), strict=True)])
    rois = np.asarray(roi).reshape(len(roi), -1)
    if rois.shape[1] == 5:
        return np.stack([_crop_one(x[int(r[0])], r[1:], *options)[None] for r in rois])
    return np.stack([np.stack([_crop_one(image, r, *options) for image in x]) for r in rois])


def _iou(box, others):
    """IoU of one (x, y, w, h) centre-size box with each of ``others``."""
    def corners(b):
        half_w, half_h = b[..., 2] / 2, b[..., 3] / 2
        return b[..., 0] - half_w, b[..., 1] - half_h, b[..., 0] + half_w, b[..., 1] + half_h

    x0, y0, x1, y1 = corners(box)
    ox0, oy0, ox1, oy1 = corners(others)
    inter = np.maximum(0, np.minimum(x1, ox1) - np.maximum(x0, ox0)) * np.maximum(0, np.minimum(y1, oy1)
                                                                                   - np.maximum(y0, oy0))
    union = box[2] * box[3] + others[:, 2] * others[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _suppress(boxes, scores, iou_threshold, score_threshold, max_boxes, per_class):
    """Kept box indices of one batch entry, best score first: a box goes when its best class
    score is not above ``score_threshold`` or it overlaps a kept box (of its class, with
    ``per_class``) by an IoU above ``iou_threshold``."""
    best = scores.max(axis=-1)
    label = scores.argmax(axis=-1)
    kept = []
    for i in np.argsort(-best, kind="stable"):
        if len(kept) == max_boxes:
            break
        if score_threshold is not None and not best[i] > score_threshold:
            continue
        rivals = [k for k in kept if not per_class or label[k] == label[i]]
        if rivals and np.any(_iou(boxes[i], boxes[rivals]) > iou_threshold):
            continue
        kept.append(i)
    return kept


@kernel("non_maximum_suppression")
def non_maximum_suppression(boxes, scores, iou_threshold, max_boxes, score_threshold=None,
                            per_class_suppression=False):
    """iOS15 (with ``score_threshold``): boxes (n, B, 4), scores (n, B, K), four outputs. iOS17:
    boxes (n, 4, B), scores (n, K, B), three outputs with the boxes last. Unused places are
    zeros, with index -1."""
    late = score_threshold is None
    if late:
        boxes, scores = np.swapaxes(boxes, 1, 2), np.swapaxes(scores, 1, 2)
    n, count = boxes.shape[0], int(max_boxes)
    out_boxes = np.zeros((n, count, 4), boxes.dtype)
    out_scores = np.zeros((n, count, scores.shape[-1]), scores.dtype)
    out_indices = np.full((n, count), -1, np.int32)
    out_counts = np.zeros(n, np.int32)
    for b in range(n):
        kept = _suppress(boxes[b], scores[b], float(iou_threshold), score_threshold, count,
                         bool(per_class_suppression))
        out_boxes[b, :len(kept)] = boxes[b, kept]
        out_scores[b, :len(kept)] = scores[b, kept]
        out_indices[b, :len(kept)] = kept
        out_counts[b] = len(kept)
    if late:
        return np.swapaxes(out_boxes, 1, 2), np.swapaxes(out_scores, 1, 2), out_indices
    return out_boxes, out_scores, out_indices, out_counts
