"""ResizeLongestSide: segment-anything's prompt transform (utils/transforms.py), numpy only.

apply_coords / apply_boxes take numpy arrays, as the official ones do; the *_torch variants
accept numpy arrays in place of tensors (float64 in, float32 out, as torch's float tensors are),
so that batched scripts run with only the import changed."""
from copy import deepcopy

import numpy as np


class ResizeLongestSide:
    def __init__(self, target_length):
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh, oldw, long_side_length):
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        return int(newh + 0.5), int(neww + 0.5)

    def apply_coords(self, coords, original_size):
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(np.asarray(coords)).astype(float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes, original_size):
        boxes = self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size)
        return boxes.reshape(-1, 4)

    def apply_coords_torch(self, coords, original_size):
        return self.apply_coords(coords, original_size).astype(np.float32)

    def apply_boxes_torch(self, boxes, original_size):
        return self.apply_boxes(boxes, original_size).astype(np.float32)
