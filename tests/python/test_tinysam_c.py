"""tinysam_c against the fixtures (same tolerances as the C tests) and against the CLI."""
import glob
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))
import tinysam_c  # noqa: E402

F = os.environ.get("TINYSAM_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
MODEL = os.path.join(F, "models", "tinysam_vit_t_random.pth")
BUILD = os.environ.get("BUILD", "build")
pytestmark = pytest.mark.skipif(not os.path.exists(MODEL), reason="fixtures missing")


@pytest.fixture(scope="module")
def sam():
    return tinysam_c.sam_model_registry["vit_t"](checkpoint=MODEL)


@pytest.fixture(scope="module")
def picture1():
    return np.array(Image.open(os.path.join(F, "images", "picture1.jpg")).convert("RGB"))


@pytest.fixture(scope="module")
def predictor(sam, picture1):
    p = tinysam_c.SamPredictor(sam)
    p.set_image(picture1)
    return p


def test_decode_matches_fixture(picture1):
    want = open(os.path.join(F, "reference", "picture1", "rgb_sha256.txt")).read().split()[0]
    assert hashlib.sha256(picture1.tobytes()).hexdigest() == want


def test_embedding(predictor):
    emb = predictor.get_image_embedding()
    ref = np.load(os.path.join(F, "reference", "picture1", "embedding.npy"))
    assert emb.shape == (1, 256, 64, 64) and emb.dtype == np.float32
    assert np.abs(emb - ref).max() <= 1e-3
    assert predictor.original_size == (770, 769) and predictor.input_size == (1024, 1023)


CASES = sorted(glob.glob(os.path.join(F, "reference", "picture1", "prompts", "*")))


@pytest.mark.parametrize("case", CASES, ids=[os.path.basename(c) for c in CASES])
def test_prompt_cases(predictor, case):
    pj = json.load(open(os.path.join(case, "prompt.json")))
    kw = {}
    if "points" in pj:
        kw["point_coords"] = np.array(pj["points"], dtype=np.float64)
        kw["point_labels"] = np.array(pj["labels"])
    if "box" in pj:
        kw["box"] = np.array(pj["box"])
    if os.path.exists(os.path.join(case, "mask_input.npy")):
        kw["mask_input"] = np.load(os.path.join(case, "mask_input.npy"))[None]
    masks, iou, low = predictor.predict(**kw)
    assert masks.shape == (3, 770, 769) and masks.dtype == bool
    assert iou.shape == (3,) and iou.dtype == np.float32
    assert low.shape == (3, 256, 256) and low.dtype == np.float32
    assert np.abs(low - np.load(os.path.join(case, "low_res.npy"))).max() <= 5e-3
    assert np.abs(iou - np.load(os.path.join(case, "iou.npy"))).max() <= 1e-3
    assert (masks == np.load(os.path.join(case, "masks.npy")).astype(bool)).mean() >= 0.999
    logits, _, _ = predictor.predict(return_logits=True, **kw)
    assert logits.dtype == np.float32 and ((logits > 0) == masks).all()


def test_single_mask_and_bgr(sam, picture1):
    p = tinysam_c.SamPredictor(sam)
    p.set_image(picture1[..., ::-1].copy(), image_format="BGR")
    m, iou, low = p.predict(point_coords=[[380, 300]], point_labels=[1], multimask_output=False)
    assert m.shape == (1, 770, 769) and iou.shape == (1,) and low.shape == (1, 256, 256)
    ref = np.load(os.path.join(F, "reference", "picture1", "prompts", "point", "low_res.npy"))
    _, _, low3 = p.predict(point_coords=[[380, 300]], point_labels=[1])
    assert np.abs(low3 - ref).max() <= 5e-3


def test_errors(sam, picture1):
    p = tinysam_c.SamPredictor(sam)
    with pytest.raises(RuntimeError):
        p.predict(point_coords=[[1, 1]], point_labels=[1])
    p.set_image(picture1)
    with pytest.raises(ValueError, match="outside"):
        p.predict(point_coords=[[5000, 1]], point_labels=[1])
    with pytest.raises(ValueError, match="point_labels"):
        p.predict(point_coords=[[1, 1]])
    with pytest.raises(ValueError):
        p.set_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(tinysam_c.TinySAMError, match="nonexistent"):
        tinysam_c.sam_model_registry["vit_b"](checkpoint="/nonexistent.pth")
    with pytest.raises(ValueError, match="box_nms_thresh"):
        tinysam_c.SamAutomaticMaskGenerator(sam, box_nms_thresh=2.0)
    p.reset_image()
    assert not p.is_image_set


OPTS = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.5,
            high_score_thresh=4.0)


def _cli_records(mode, out):
    cmd = [os.path.join(ROOT, BUILD, "tinysam"), "everything", "--model", MODEL, "--image",
           os.path.join(F, "images", "picture1.jpg"), "--mode", mode, "--out", out, "--quiet",
           "--points-per-side", "8", "--pred-iou-thresh", "0", "--stability-score-thresh", "0.5",
           "--high-score-thresh", "4"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.load(open(out))


@pytest.mark.parametrize("mode", ["hierarchical", "grid"])
def test_generators_equal_cli(sam, picture1, tmp_path, mode):
    cli = _cli_records(mode, str(tmp_path / "cli.json"))
    if mode == "grid":
        o = {k: v for k, v in OPTS.items() if k != "high_score_thresh"}
        gen = tinysam_c.SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **o)
        recs = gen.generate(picture1)
    else:
        gen = tinysam_c.SamHierarchicalMaskGenerator(sam, output_mode="coco_rle", **OPTS)
        recs = gen.hierarchical_generate(picture1)
    assert len(recs) == len(cli) and len(recs) > 0
    for a, b in zip(recs, cli):
        assert a["segmentation"] == b["segmentation"]
        for k in ("area", "bbox", "point_coords"):
            assert a[k] == b[k]
        assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-7
        assert abs(a["stability_score"] - b["stability_score"]) < 1e-7
        assert ("crop_box" in a) == (mode == "grid")
    # the other output modes describe the same masks
    bm = tinysam_c.SamHierarchicalMaskGenerator(sam, output_mode="binary_mask", **OPTS) \
        if mode == "hierarchical" else tinysam_c.SamAutomaticMaskGenerator(
            sam, output_mode="binary_mask", **{k: v for k, v in OPTS.items() if k != "high_score_thresh"})
    masks = bm.generate(picture1)
    assert masks[0]["segmentation"].shape == (770, 769)
    assert int(masks[0]["segmentation"].sum()) == recs[0]["area"]


def test_unmodified_user_script(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "user_script.py")
    src = open(script).read()
    # the script is segment-anything's usual code; only its import names tinysam_c
    assert "from tinysam_c import sam_model_registry, SamPredictor, SamAutomaticMaskGenerator" in src
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    out = subprocess.run([sys.executable, script, MODEL, os.path.join(F, "images", "picture1.jpg"),
                          str(tmp_path)], check=True, capture_output=True, text=True, env=env)
    n, score = out.stdout.split()
    assert int(n) >= 1 and float(score) > 0
    m = np.array(Image.open(tmp_path / "best_mask.png"))
    ref = np.load(os.path.join(F, "reference", "picture1", "prompts", "point", "masks.npy"))[0]
    assert ((m > 127) == ref.astype(bool)).mean() >= 0.999


def test_threads():
    tinysam_c.set_num_threads(1)
    assert tinysam_c.get_num_threads() == 1
    tinysam_c.set_num_threads(0)
    assert tinysam_c.get_num_threads() >= 1
