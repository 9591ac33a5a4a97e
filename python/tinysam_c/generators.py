"""SamAutomaticMaskGenerator (SAM's grid, with crops) and SamHierarchicalMaskGenerator
(TinySAM's hierarchical mode), returning the official record dicts."""
import ctypes

import numpy as np

from . import _lib
from .predictor import _as_image

_OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def _rle_to_mask(counts, h, w):
    vals = np.zeros(len(counts), dtype=bool)
    vals[1::2] = True
    return np.repeat(vals, counts).reshape(w, h).T


class _Generator:
    _mode = 0

    def __init__(self, model, points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88,
                 stability_score_thresh=0.95, stability_score_offset=1.0, box_nms_thresh=0.7,
                 crop_n_layers=0, crop_nms_thresh=0.7, crop_overlap_ratio=512 / 1500,
                 crop_n_points_downscale_factor=1, point_grids=None, min_mask_region_area=0,
                 output_mode="binary_mask", high_score_thresh=8.5):
        if point_grids is not None:
            raise ValueError("point_grids is not supported by tinysam_c; use points_per_side")
        if points_per_side is None:
            raise ValueError("points_per_side is required")
        if output_mode not in _OUTPUT_MODES:
            raise ValueError(f"Unknown output_mode {output_mode}.")
        self.model = model
        self.output_mode = output_mode
        o = _lib.EverythingOptions()
        _lib.tinysam_everything_defaults(ctypes.byref(o))
        o.mode = self._mode
        o.points_per_side = int(points_per_side)
        o.points_per_batch = int(points_per_batch)
        o.pred_iou_thresh = pred_iou_thresh
        o.stability_score_thresh = stability_score_thresh
        o.stability_score_offset = stability_score_offset
        o.high_score_thresh = high_score_thresh
        o.box_nms_thresh = box_nms_thresh
        o.crop_n_layers = int(crop_n_layers)
        o.crop_nms_thresh = crop_nms_thresh
        o.crop_overlap_ratio = crop_overlap_ratio
        o.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        o.min_mask_region_area = int(min_mask_region_area)
        _lib.check(_lib.tinysam_everything_check(ctypes.byref(o)))
        self._opts = o
        self.points_evaluated = None

    def _run(self, image):
        img, keep = _as_image(image)
        res = _lib.EverythingResult()
        _lib.check(_lib.tinysam_everything(self.model._handle, ctypes.byref(img), None,
                                           ctypes.byref(self._opts), ctypes.byref(res)))
        try:
            self.points_evaluated = {"per_pass": list(res.points_per_pass[:res.n_passes]),
                                     "total": res.points_total}
            return [self._record(res.records[i]) for i in range(res.n)]
        finally:
            _lib.tinysam_everything_free(ctypes.byref(res))
            del keep

    def _record(self, r):
        h, w = r.height, r.width
        counts = np.ctypeslib.as_array(r.counts, shape=(r.n_counts,)).astype(np.int64)
        if self.output_mode == "coco_rle":
            p = _lib.tinysam_rle_to_coco_string(r.counts, r.n_counts)
            seg = {"size": [h, w], "counts": ctypes.string_at(p).decode("ascii")}
            _lib.libc.free(p)
        elif self.output_mode == "uncompressed_rle":
            seg = {"size": [h, w], "counts": counts.tolist()}
        else:
            seg = _rle_to_mask(counts, h, w)
        rec = {"segmentation": seg, "area": int(r.area), "bbox": list(r.bbox),
               "predicted_iou": float(r.predicted_iou),
               "point_coords": [[float(r.point[0]), float(r.point[1])]],
               "stability_score": float(r.stability_score)}
        if self._mode == 1:
            rec["crop_box"] = list(r.crop_box)
        return rec


class SamAutomaticMaskGenerator(_Generator):
    """segment_anything.SamAutomaticMaskGenerator: SAM's point grid, optional crop layers."""
    _mode = 1

    def generate(self, image):
        return self._run(image)


class SamHierarchicalMaskGenerator(_Generator):
    """TinySAM's hierarchical generator: an 8x8 grid, then dense points where no confident
    mask lies. Its records carry no crop_box, as the official ones."""
    _mode = 0

    def hierarchical_generate(self, image):
        return self._run(image)

    generate = hierarchical_generate
