"""SamPredictor.predict_torch with numpy arrays (segment-anything's batched API): the fixture
prompt cases batched against one-by-one predict, transform.apply_*_torch on numpy arrays, and
segment-anything's "batched prompt inputs" notebook example with only the import changed.

Batched sets share the decoder's first-layer image projections (a different summation order
than a lone set): logits agree to ~1e-5, so IoUs are compared to 1e-5 and masks may differ on
a pixel or two whose logit sits at 0 (at most 1 in 10,000)."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))
import tinysam_c  # noqa: E402

F = os.environ.get("TINYSAM_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
MODEL = os.path.join(F, "models", "tinysam_vit_t_random.pth")
pytestmark = pytest.mark.skipif(not os.path.exists(MODEL), reason="fixtures missing")


@pytest.fixture(scope="module")
def image():
    return np.array(Image.open(os.path.join(F, "images", "picture1.jpg")).convert("RGB"))


@pytest.fixture(scope="module")
def predictor(image):
    sam = tinysam_c.sam_model_registry["vit_t"](checkpoint=MODEL)
    p = tinysam_c.SamPredictor(sam)
    p.set_image(image)
    return p


def close_masks(a, b):
    return np.count_nonzero(a != b) <= max(1, a.size // 10000)


def cases():
    d = os.path.join(F, "reference", "picture1", "prompts")
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name, "prompt.json")) as f:
            out[name] = json.load(f)
    return out


def test_transforms_accept_numpy(predictor, image):
    t = predictor.transform
    size = image.shape[:2]
    boxes = np.array([[10, 20, 300, 400], [0, 0, 768, 769]])
    tb = t.apply_boxes_torch(boxes, size)
    assert tb.shape == (2, 4) and tb.dtype == np.float32
    assert np.allclose(tb, t.apply_boxes(boxes, size))
    # long side 770 -> 1024: scale 1024/770 on both axes (newh 1024, neww int(769*1024/770+.5))
    newh, neww = t.get_preprocess_shape(770, 769, 1024)
    assert (newh, neww) == (1024, 1023)
    c = t.apply_coords_torch(np.array([[[769.0, 770.0]]]), size)
    assert c.shape == (1, 1, 2) and np.allclose(c[0, 0], [1023, 1024])


def test_fixture_cases_batched(predictor):
    """Every fixture case with points (same N grouped) or a box, batched vs one by one."""
    groups = {}
    for name, c in cases().items():
        if c.get("mask_from") is not None:
            continue
        pts = c.get("points") or []
        key = (len(pts), c.get("box") is not None)
        groups.setdefault(key, []).append(c)
    size = predictor.original_size
    checked = 0
    for (n, has_box), cs in groups.items():
        cs = cs * 2 if len(cs) == 1 else cs  # a batch of at least two
        pc = pl = bx = None
        if n:
            pc = predictor.transform.apply_coords_torch(
                np.array([c["points"] for c in cs], dtype=np.float64), size)
            pl = np.array([c["labels"] for c in cs])
        if has_box:
            bx = predictor.transform.apply_boxes_torch(np.array([c["box"] for c in cs]), size)
        masks, iou, low = predictor.predict_torch(pc, pl, bx, multimask_output=True)
        assert masks.shape[:2] == (len(cs), 3) and iou.shape == (len(cs), 3)
        for i, c in enumerate(cs):
            kw = {}
            if n:
                kw = dict(point_coords=np.array(c["points"]), point_labels=np.array(c["labels"]))
            if has_box:
                kw["box"] = np.array(c["box"])
            m1, i1, l1 = predictor.predict(multimask_output=True, **kw)
            assert np.allclose(iou[i], i1, atol=1e-5, rtol=0)
            assert np.abs(low[i] - l1).max() < 1e-4
            for k in range(3):
                assert close_masks(masks[i, k], m1[k])
            checked += 1
    assert checked >= 6


def test_notebook_batched_prompts(predictor, image):
    """segment-anything's predictor notebook, "batched prompt inputs", as written there with
    numpy arrays in place of torch tensors (boxes scaled to picture1, 769x770)."""
    np_ = np
    input_boxes = np_.array([
        [25, 90, 575, 283],
        [141, 200, 233, 291],
        [458, 183, 550, 266],
        [413, 225, 466, 250],
    ])
    transformed_boxes = predictor.transform.apply_boxes_torch(input_boxes, image.shape[:2])
    masks, _, _ = predictor.predict_torch(
        point_coords=None,
        point_labels=None,
        boxes=transformed_boxes,
        multimask_output=False,
    )
    assert masks.shape == (4, 1, image.shape[0], image.shape[1])
    shown = [mask.cpu().numpy() for mask in masks]  # what show_mask() is given
    for box, m in zip(input_boxes, shown):
        one, _, _ = predictor.predict(box=box, multimask_output=False)
        assert close_masks(m, one)


def test_predict_torch_errors(predictor):
    with pytest.raises(ValueError):
        predictor.predict_torch(np.zeros((2, 1, 2)), np.ones((3, 1)))
    with pytest.raises(ValueError):
        predictor.predict_torch(None, None, np.zeros((2, 4)), np.zeros((3, 1, 256, 256)))
    with pytest.raises(ValueError, match="outside"):
        predictor.predict_torch(None, None, np.array([[0, 0, 5000, 10]], dtype=np.float32))
