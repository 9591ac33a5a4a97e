"""Overhead of the Python binding: the same work through tinysam_c and through the CLI (whose
JSON reports the engine's own timings), medians of several runs, same thread count.
Usage: python3 bench/bench_python.py [--runs N]"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))
import tinysam_c  # noqa: E402

F = os.environ.get("TINYSAM_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
MODEL = os.path.join(F, "models", "tinysam_vit_t_random.pth")
IMAGE = os.path.join(F, "images", "picture1.jpg")
CLI = os.path.join(ROOT, os.environ.get("BUILD", "build"), "tinysam")
RUNS = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 5
EV = ["--points-per-side", "8", "--pred-iou-thresh", "0", "--stability-score-thresh", "0.5"]


def cli(args):
    out = subprocess.run([CLI] + args, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["timings_ms"]


def main():
    threads = tinysam_c.get_num_threads()
    seg = [cli(["segment", "--model", MODEL, "--image", IMAGE, "--point", "380,300",
                "--out-dir", "/tmp/tinysam_bench_py"]) for _ in range(RUNS)]
    c_enc = statistics.median(t["encode"] for t in seg)
    c_dec = statistics.median(t["decode"] for t in seg)
    ev = [cli(["everything", "--model", MODEL, "--image", IMAGE, "--out", "/tmp/tinysam_bench_py.json",
               "--quiet"] + EV) for _ in range(RUNS)]
    c_ev = statistics.median(t["generate"] for t in ev)

    sam = tinysam_c.sam_model_registry["vit_t"](checkpoint=MODEL)
    image = np.array(Image.open(IMAGE).convert("RGB"))
    p = tinysam_c.SamPredictor(sam)
    enc, dec, evs = [], [], []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        p.set_image(image)
        enc.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        p.predict(point_coords=np.array([[380, 300]]), point_labels=np.array([1]))
        dec.append((time.perf_counter() - t0) * 1e3)
    gen = tinysam_c.SamHierarchicalMaskGenerator(sam, points_per_side=8, pred_iou_thresh=0.0,
                                                 stability_score_thresh=0.5,
                                                 output_mode="coco_rle")
    for _ in range(RUNS):
        t0 = time.perf_counter()
        gen.generate(image)
        evs.append((time.perf_counter() - t0) * 1e3)
    py_enc, py_dec, py_ev = statistics.median(enc), statistics.median(dec), statistics.median(evs)
    print(f"python binding vs CLI, {threads} threads, medians of {RUNS}")
    for name, a, b in (("set_image / encode", py_enc, c_enc), ("predict / decode", py_dec, c_dec),
                       ("hierarchical generate (8x8, relaxed)", py_ev, c_ev)):
        print(f"  {name:40s} python {a:8.1f} ms   CLI {b:8.1f} ms   overhead {100 * (a / b - 1):+.1f}%")


if __name__ == "__main__":
    main()
