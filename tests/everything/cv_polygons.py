"""OpenCV as the independent reference for src/everything/polygons.c (test_polygons.c runs it).

usage: cv_polygons.py DIR N EPS_FACTOR
DIR/mask_K.png (0/255) and DIR/ours_K.txt (our contours: lines "raw x y x y ..." before
simplification and "simp x y ..." after) for K < N. Prints one line per case:
"case K same=0|1 n_cv=C n_ours=O v_cv=A v_ours=B iou=F"
same: our raw contours are cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_NONE)'s, point for
point (each compared from its first point on); v_*: vertex totals after approxPolyDP (cv2) and
our simplification at eps = EPS_FACTOR x arcLength; iou: our simplified polygons filled by
cv2.fillPoly against the mask with its holes filled (cv2's outer contours filled); cv_iou: the
same for cv2.approxPolyDP's polygons (a jagged mask's perimeter makes eps large for both).
"""
import sys

import cv2
import numpy as np


def read_ours(path):
    raw, simp = [], []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            pts = np.array([int(v) for v in parts[1:]], dtype=np.int32).reshape(-1, 2)
            (raw if parts[0] == "raw" else simp).append(pts)
    return raw, simp


def canon(c):
    return tuple(map(tuple, c.reshape(-1, 2).tolist()))


def main():
    d, n, factor = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    for k in range(n):
        m = cv2.imread(f"{d}/mask_{k}.png", cv2.IMREAD_GRAYSCALE)
        binary = (m > 0).astype(np.uint8)
        found = cv2.findContours(binary.copy(), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contours = found[-2]
        raw, simp = read_ours(f"{d}/ours_{k}.txt")
        same = sorted(canon(c) for c in contours) == sorted(canon(c) for c in raw)
        v_cv = 0
        cv_fill = np.zeros_like(binary)
        for c in contours:
            a = cv2.approxPolyDP(c, factor * cv2.arcLength(c, True), True)
            if len(a) >= 3:
                v_cv += len(a)
                cv2.fillPoly(cv_fill, [a], 1)
        v_ours = sum(len(p) for p in simp)
        filled = np.zeros_like(binary)
        cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
        ours = np.zeros_like(binary)
        for p in simp:  # one at a time: a union, whatever the polygons' overlaps
            cv2.fillPoly(ours, [p.reshape(-1, 1, 2)], 1)
        inter = int(np.logical_and(filled, ours).sum())
        union = int(np.logical_or(filled, ours).sum())
        iou = inter / union if union else 1.0
        cv_union = int(np.logical_or(filled, cv_fill).sum())
        cv_iou = int(np.logical_and(filled, cv_fill).sum()) / cv_union if cv_union else 1.0
        print(f"case {k} same={int(same)} n_cv={len(contours)} n_ours={len(raw)} "
              f"v_cv={v_cv} v_ours={v_ours} iou={iou:.6f} cv_iou={cv_iou:.6f}")


if __name__ == "__main__":
    main()
