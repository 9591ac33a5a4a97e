/* folder_job.h - one command over every image of a folder, as a dataset job: the shard's
 * images only, the model loaded once, the next image decoded on another thread while the
 * current one runs, one output file per image written crash-safe (temporary name, fsync,
 * rename), resumable (complete outputs are skipped, partial ones redone), failures recorded
 * in OUT/_failed/<stem>.txt without stopping the run, SIGTERM/SIGINT/SIGUSR1 answered by
 * finishing the current image and returning with `interrupted` set (the CLI exits 75,
 * EX_TEMPFAIL, so that a requeue script can tell a time limit from a failure).
 * `tinysam everything --images` and `tinysam embed --images` run on it. */
#ifndef TS_DIST_FOLDER_JOB_H
#define TS_DIST_FOLDER_JOB_H

#include "dist/shard.h"
#include "tinysam.h"

/* EX_TEMPFAIL (sysexits.h): stopped by a signal, rerun to resume. */
#define TS_EXIT_INTERRUPTED 75

typedef struct {
    const char *name;       /* file name in the images folder */
    const char *stem;       /* name without its extension: OUT/<stem><ext> */
    const char *image_path; /* images_dir/name */
    const char *out_path;   /* out_dir/<stem><ext> */
    const char *tmp_path;   /* out_path + ".tmp": process writes here, the runner renames */
    int index;              /* position in the sorted listing of the whole folder */
} ts_folder_item;

typedef struct {
    const char *what;       /* "everything", "embed": prefixes progress and messages */
    const char *images_dir, *out_dir;
    const char *out_ext;    /* ".json", ".npy" */
    long long max_pixels;   /* for the image decoder (0: the library default) */
    const ts_shard *shard;
    int quiet;              /* no progress lines */
    const char *units;      /* what process counts ("masks"), or NULL */
    const char *manifest;   /* summary JSON path ("{shard}" expanded), or NULL */
    void *user;
    /* Called once before the first image that needs computing (a finished folder resumes
     * without loading the model). */
    int (*prepare)(void *user);
    /* 1 when out_path holds a complete output (NULL: any non-empty regular file). */
    int (*complete)(void *user, const char *out_path);
    /* Optional: work on the decoded image that needs no model (the encoder's resize and
     * normalisation), run on the loader thread while the previous image computes; *aux goes
     * to process, then to aux_free. Must touch no shared state. */
    int (*preprocess)(const tinysam_image *img, void **aux);
    void (*aux_free)(void *aux);
    /* Computes one image and writes item->tmp_path; *units: what it found. */
    int (*process)(void *user, const ts_folder_item *item, const tinysam_image *img, void *aux,
                   long long *units);
} ts_folder_job;

typedef struct {
    int in_folder;   /* images in the folder */
    int owned;       /* this shard's images */
    int done;        /* computed in this run */
    int skipped;     /* complete outputs found */
    int failed;      /* recorded in _failed/ */
    int interrupted; /* the signal number that stopped the run, or 0 */
    long long units;
    double seconds;
    char first_failure[600]; /* "name: message" of the first failed image */
} ts_folder_stats;

/* Runs the job. Returns 0 when every image was handled (done, skipped or recorded as failed;
 * see stats), or an error that stopped the whole run (unreadable folder, two files with one
 * stem, unwritable output folder, prepare failed). */
int ts_folder_job_run(const ts_folder_job *job, ts_folder_stats *stats);

/* Writes a file crash-safe: data to path.tmp, fsync, rename to path. */
int ts_write_file_atomic(const char *path, const void *data, size_t n);
/* fsync(path) then rename(tmp, path): the last step of every output. */
int ts_commit_file(const char *tmp, const char *path);

/* The CLI's ending: the one-line JSON summary on stdout (extra: the command's own
 * "key": value pairs, placed after "failed"), the summary line on stderr; returns the exit
 * status (0, 1 when images failed, TS_EXIT_INTERRUPTED). */
int ts_folder_job_exit(const ts_folder_job *job, const ts_folder_stats *st, const char *extra);

#endif
