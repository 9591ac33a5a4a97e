"""Independent check of X-AnyLabeling polygons (test_labelling.c runs it).

usage: xany_iou.py MASK.png POLYGONS.json EPS_FACTOR
POLYGONS.json: the /v1/predict answer. Fills its polygons with OpenCV's fillPoly (one at a time,
a union) and prints "iou=F cv_iou=G n=N": F against the mask with its holes filled (outer
contours filled by drawContours), G the same for cv2.approxPolyDP's own polygons at the same
epsilon (the ceiling a jagged random-weight mask allows).
"""
import json
import sys

import cv2
import numpy as np

mask = (cv2.imread(sys.argv[1], cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
answer = json.load(open(sys.argv[2]))
factor = float(sys.argv[3])
contours = cv2.findContours(mask.copy(), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[-2]
filled = np.zeros_like(mask)
cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
ours = np.zeros_like(mask)
shapes = answer["data"]["shapes"]
for s in shapes:
    cv2.fillPoly(ours, [np.array(s["points"], dtype=np.int32).reshape(-1, 1, 2)], 1)
ref = np.zeros_like(mask)
for c in contours:
    a = cv2.approxPolyDP(c, factor * cv2.arcLength(c, True), True)
    if len(a) >= 3:
        cv2.fillPoly(ref, [a], 1)


def iou(a, b):
    u = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / u if u else 1.0


print(f"iou={iou(filled, ours):.6f} cv_iou={iou(filled, ref):.6f} n={len(shapes)}")
