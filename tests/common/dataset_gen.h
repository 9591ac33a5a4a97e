/* dataset_gen.h - small image folders for the dataset-job tests and benchmarks: copies of
 * fixture images and generated PNGs, each with a scene-oracle file of its size
 * (spec/ORACLE.md: scene_a's objects scaled to the image, shifted per variant) whose objects
 * are also what the PNG shows. */
#ifndef TS_TESTS_DATASET_GEN_H
#define TS_TESTS_DATASET_GEN_H

/* Writes the scene of a W x H image, variant v, as JSON. */
int dg_write_scene(const char *path, int W, int H, int v);
/* Writes a W x H RGB PNG painting the objects of scene (W, H, v). */
int dg_write_image(const char *path, int W, int H, int v);
/* Fills images/ with n images (up to 4 fixture images, then generated PNGs of at most 0.5 MP;
 * names img_00.png / fix_01.jpg ... sorted in creation order) and scenes/ (may be NULL)
 * with <stem>.json for each. Creates both directories. Returns 0 or -1. */
int dg_make_dataset(const char *images, const char *scenes, int n);

#endif
