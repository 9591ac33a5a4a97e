# A typical segment-anything user script, unmodified except for the import line (the test
# checks that). Usage: python3 user_script.py CHECKPOINT IMAGE OUT_DIR
import sys

import numpy as np
from PIL import Image

from tinysam_c import sam_model_registry, SamPredictor, SamAutomaticMaskGenerator

checkpoint, image_path, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
sam = sam_model_registry["vit_t"](checkpoint=checkpoint)
sam.to(device="cpu")
sam.eval()

image = np.array(Image.open(image_path).convert("RGB"))
predictor = SamPredictor(sam)
predictor.set_image(image)
masks, scores, logits = predictor.predict(
    point_coords=np.array([[380, 300]]),
    point_labels=np.array([1]),
    multimask_output=True,
)
best = int(np.argmax(scores))
Image.fromarray((masks[best] * 255).astype(np.uint8)).save(f"{out_dir}/best_mask.png")

mask_generator = SamAutomaticMaskGenerator(sam, points_per_side=4, pred_iou_thresh=0.0,
                                           stability_score_thresh=0.5)
anns = mask_generator.generate(image)
for i, ann in enumerate(sorted(anns, key=lambda a: a["area"], reverse=True)):
    Image.fromarray(ann["segmentation"].astype(np.uint8) * 255).save(f"{out_dir}/mask_{i}.png")
print(len(anns), float(scores[best]))
