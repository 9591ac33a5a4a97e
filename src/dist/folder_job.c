/* folder_job.c - a command over a folder of images, sharded, crash-safe and resumable. */
#include "dist/folder_job.h"

#include "core.h"
#include "io/json.h"
#include "train/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- files --------------------------------------------------------------------------------- */

int ts_commit_file(const char *tmp, const char *path) {
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ts_error(TINYSAM_E_IO, "%s: cannot open: %s", tmp, strerror(errno));
    /* the data must be on disk before the name says the file is complete */
    int rc = fsync(fd) != 0 ? ts_error(TINYSAM_E_IO, "%s: fsync: %s", tmp, strerror(errno)) : 0;
    close(fd);
    if (!rc && rename(tmp, path) != 0)
        rc = ts_error(TINYSAM_E_IO, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    return rc;
}

int ts_write_file_atomic(const char *path, const void *data, size_t n) {
    size_t len = strlen(path) + 5;
    char *tmp = malloc(len);
    if (!tmp) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    snprintf(tmp, len, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int rc = 0;
    if (!f) rc = ts_error(TINYSAM_E_IO, "%s: cannot write: %s", tmp, strerror(errno));
    else {
        if (fwrite(data, 1, n, f) != n) rc = ts_error(TINYSAM_E_IO, "%s: write failed", tmp);
        if (fclose(f) != 0 && !rc) rc = ts_error(TINYSAM_E_IO, "%s: write failed", tmp);
    }
    if (!rc) rc = ts_commit_file(tmp, path);
    if (rc) remove(tmp);
    free(tmp);
    return rc;
}

static int default_complete(void *user, const char *path) {
    (void)user;
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

/* ---- signals ------------------------------------------------------------------------------- */

static volatile sig_atomic_t g_stop;

static void on_stop_signal(int sig) {
    if (g_stop) { /* a second signal: stop now (the next run redoes this image) */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    g_stop = sig;
    static const char msg[] = "\ntinysam: signal received: finishing the current image, then "
                              "exiting with status 75 (run the same command again to resume)\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
}

static const int k_signals[] = {SIGTERM, SIGINT, SIGUSR1};
#define N_SIGNALS ((int)(sizeof k_signals / sizeof k_signals[0]))

static void signals_install(struct sigaction *old) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    g_stop = 0;
    for (int i = 0; i < N_SIGNALS; i++) sigaction(k_signals[i], &sa, &old[i]);
}

static void signals_restore(const struct sigaction *old) {
    for (int i = 0; i < N_SIGNALS; i++) sigaction(k_signals[i], &old[i], NULL);
}

static const char *signal_name(int sig) {
    return sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : sig == SIGUSR1 ? "SIGUSR1" : "a signal";
}

/* ---- the next image, decoded on another thread --------------------------------------------- */

typedef struct {
    pthread_t th;
    int running;
    const ts_folder_job *job;
    const char *path;
    tinysam_image img;
    void *aux;
    int rc;
    char err[1024];
} prefetch;

static void *prefetch_main(void *arg) {
    prefetch *p = arg;
    p->rc = tinysam_image_load(p->path, p->job->max_pixels, &p->img);
    if (!p->rc && p->job->preprocess) p->rc = p->job->preprocess(&p->img, &p->aux);
    if (p->rc) snprintf(p->err, sizeof p->err, "%s", tinysam_last_error());
    return NULL;
}

static void prefetch_start(prefetch *p, const ts_folder_job *job, const char *path) {
    memset(&p->img, 0, sizeof p->img);
    p->job = job;
    p->path = path;
    p->aux = NULL;
    p->rc = 0;
    p->err[0] = 0;
    p->running = pthread_create(&p->th, NULL, prefetch_main, p) == 0;
    if (!p->running) prefetch_main(p); /* no thread: decode here */
}

static void prefetch_join(prefetch *p) {
    if (p->running) pthread_join(p->th, NULL);
    p->running = 0;
}

/* ---- the run ------------------------------------------------------------------------------- */

static void format_eta(double s, char *buf, size_t n) {
    long t = (long)(s + 0.5);
    if (t < 60) snprintf(buf, n, "%lds", t);
    else if (t < 3600) snprintf(buf, n, "%ldm %02lds", t / 60, t % 60);
    else if (t < 86400) snprintf(buf, n, "%ldh %02ldm", t / 3600, t / 60 % 60);
    else snprintf(buf, n, "%ldd %02ldh", t / 86400, t / 3600 % 24);
}

typedef struct {
    char *name, *stem, *image_path, *out_path, *tmp_path;
    int index;
} item_paths;

static void items_free(item_paths *v, int n) {
    for (int i = 0; v && i < n; i++) {
        free(v[i].stem);
        free(v[i].image_path);
        free(v[i].out_path);
        free(v[i].tmp_path);
    }
    free(v);
}

static char *join3(const char *a, const char *b, const char *c) {
    size_t n = strlen(a) + strlen(b) + strlen(c) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s%s", a, b, c);
    return s;
}

/* Records a failed image in OUT/_failed/<stem>.txt. */
static void record_failure(const ts_folder_job *job, const item_paths *it, const char *msg) {
    char *dir = join3(job->out_dir, "_failed", "");
    char *path = dir ? join3(dir, it->stem, ".txt") : NULL;
    if (path && ts_mkdirs(dir) == 0) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        if (f) {
            fprintf(f, "{\"image\": ");
            ts_json_write_string(f, it->image_path);
            fprintf(f, ", \"command\": \"%s\", \"error\": ", job->what);
            ts_json_write_string(f, msg);
            fprintf(f, "}\n");
            fclose(f);
            if (ts_write_file_atomic(path, text, len))
                fprintf(stderr, "%s: cannot record the failure: %s\n", job->what,
                        tinysam_last_error());
        }
        free(text);
    }
    free(path);
    free(dir);
}

static void clear_failure(const ts_folder_job *job, const item_paths *it) {
    char *dir = join3(job->out_dir, "_failed", "");
    char *path = dir ? join3(dir, it->stem, ".txt") : NULL;
    if (path) unlink(path);
    free(path);
    free(dir);
}

static int write_manifest(const ts_folder_job *job, const ts_folder_stats *st) {
    char path[4096];
    int rc = ts_shard_expand(job->manifest, job->shard, path, sizeof path);
    if (rc) return rc;
    char *dir = strdup(path), *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash && slash != dir) {
        *slash = 0;
        rc = ts_mkdirs(dir);
    }
    free(dir);
    if (rc) return rc;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    fprintf(f, "{\"command\": \"%s\", \"images_dir\": ", job->what);
    ts_json_write_string(f, job->images_dir);
    fprintf(f, ", \"out_dir\": ");
    ts_json_write_string(f, job->out_dir);
    fprintf(f, ",\n \"shard\": {\"index\": %d, \"count\": %d, \"how\": ", job->shard->index,
            job->shard->count);
    ts_json_write_string(f, job->shard->how);
    fprintf(f, "},\n \"images_in_folder\": %d, \"images\": %d, \"done\": %d, \"skipped\": %d, "
               "\"failed\": %d",
            st->in_folder, st->owned, st->done, st->skipped, st->failed);
    if (job->units) fprintf(f, ", \"%s\": %lld", job->units, st->units);
    fprintf(f, ", \"seconds\": %.3f, \"interrupted\": %s}\n", st->seconds,
            st->interrupted ? "true" : "false");
    fclose(f);
    rc = ts_write_file_atomic(path, text, len);
    free(text);
    return rc;
}

int ts_folder_job_run(const ts_folder_job *job, ts_folder_stats *st) {
    memset(st, 0, sizeof *st);
    const double t_start = ts_now_ms();
    char **names = NULL;
    int n = 0;
    int rc = ts_dataset_list_images(job->images_dir, &names, &n);
    if (rc) return ts_error_prefix(rc, "%s", job->what);
    if (!n) rc = ts_error(TINYSAM_E_ARG, "%s: no .jpg/.jpeg/.png images in '%s'", job->what,
                          job->images_dir);
    if (!rc) rc = ts_dataset_check_stems(names, n, job->what);
    if (!rc) rc = ts_mkdirs(job->out_dir);
    st->in_folder = n;

    /* this shard's images, and which of them still need computing */
    item_paths *items = rc ? NULL : calloc((size_t)n + 1, sizeof *items);
    int *todo = rc ? NULL : malloc(sizeof(int) * ((size_t)n + 1));
    if (!rc && (!items || !todo)) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    int n_owned = 0, n_todo = 0;
    char ext_tmp[40];
    snprintf(ext_tmp, sizeof ext_tmp, "%.30s.tmp", job->out_ext);
    for (int i = 0; !rc && i < n; i++) {
        if (!ts_shard_owns(job->shard, i)) continue;
        item_paths *it = &items[n_owned++];
        const char *dot = strrchr(names[i], '.');
        it->name = names[i];
        it->index = i;
        it->stem = strndup(names[i], (size_t)(dot - names[i]));
        it->image_path = join3(job->images_dir, names[i], "");
        it->out_path = it->stem ? join3(job->out_dir, it->stem, job->out_ext) : NULL;
        it->tmp_path = it->stem ? join3(job->out_dir, it->stem, ext_tmp) : NULL;
        if (!it->stem || !it->image_path || !it->out_path || !it->tmp_path) {
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            break;
        }
        if ((job->complete ? job->complete : default_complete)(job->user, it->out_path)) {
            st->skipped++;
            clear_failure(job, it); /* an earlier run's failure, since fixed by hand */
        } else {
            todo[n_todo++] = n_owned - 1;
        }
    }
    st->owned = n_owned;
    if (!rc && job->shard->found)
        fprintf(stderr, "%s: shard %d/%d (%s): %d of %d images\n", job->what, job->shard->index,
                job->shard->count, job->shard->how, n_owned, n);
    if (!rc && st->skipped && !job->quiet)
        fprintf(stderr, "%s: %d of %d images already have complete outputs: skipped\n",
                job->what, st->skipped, n_owned);
    if (!rc && n_todo && job->prepare) rc = job->prepare(job->user);

    struct sigaction old[N_SIGNALS];
    signals_install(old);
    prefetch pf = {0};
    double t_work = ts_now_ms(), t_done = 0;
    if (!rc && n_todo) prefetch_start(&pf, job, items[todo[0]].image_path);
    for (int k = 0; !rc && k < n_todo; k++) {
        item_paths *it = &items[todo[k]];
        prefetch_join(&pf);
        tinysam_image img = pf.img; /* ownership moves here */
        void *aux = pf.aux;
        memset(&pf.img, 0, sizeof pf.img);
        pf.aux = NULL;
        int img_rc = pf.rc;
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", pf.err);
        if (g_stop) { /* the signal came while the previous image ran: stop before this one */
            tinysam_image_free(&img);
            if (aux) job->aux_free(aux);
            break;
        }
        if (k + 1 < n_todo) prefetch_start(&pf, job, items[todo[k + 1]].image_path);

        double t0 = ts_now_ms();
        long long units = 0;
        ts_folder_item fi = {it->name, it->stem, it->image_path, it->out_path, it->tmp_path,
                             it->index};
        unlink(it->tmp_path); /* left by a killed run */
        if (!img_rc) {
            img_rc = job->process(job->user, &fi, &img, aux, &units);
            if (img_rc) snprintf(msg, sizeof msg, "%s", tinysam_last_error());
        }
        if (!img_rc) {
            img_rc = ts_commit_file(it->tmp_path, it->out_path);
            if (img_rc) snprintf(msg, sizeof msg, "%s", tinysam_last_error());
        }
        tinysam_image_free(&img);
        if (aux) job->aux_free(aux);
        const int pos = todo[k] + 1;
        if (img_rc) {
            unlink(it->tmp_path);
            if (img_rc == TINYSAM_E_NOMEM) { /* not the image's fault: stop the run */
                rc = ts_error(img_rc, "%s: %s: %s", job->what, it->name, msg);
                break;
            }
            st->failed++;
            if (st->failed == 1)
                snprintf(st->first_failure, sizeof st->first_failure, "%.200s: %.390s", it->name,
                         msg);
            record_failure(job, it, msg);
            fprintf(stderr, "%s [%d/%d] %s: failed: %s\n", job->what, pos, n_owned, it->name, msg);
            continue;
        }
        clear_failure(job, it);
        st->done++;
        st->units += units;
        t_done = ts_now_ms();
        if (!job->quiet) {
            double secs = (t_done - t_work) / 1000.0, rate = st->done / (secs > 0 ? secs : 1e-9);
            char eta[32], u[64] = "", ur[64] = "";
            format_eta((n_todo - k - 1) / rate, eta, sizeof eta);
            if (job->units) {
                snprintf(u, sizeof u, ", %lld %s", units, job->units);
                snprintf(ur, sizeof ur, ", %.1f %s/s", st->units / (secs > 0 ? secs : 1e-9),
                         job->units);
            }
            fprintf(stderr, "%s [%d/%d] %s: %.0f ms%s | %.2f images/s%s, eta %s\n", job->what, pos,
                    n_owned, it->name, t_done - t0, u, rate, ur, eta);
        }
    }
    prefetch_join(&pf);
    tinysam_image_free(&pf.img);
    if (pf.aux) job->aux_free(pf.aux);
    st->interrupted = g_stop;
    signals_restore(old);
    st->seconds = (ts_now_ms() - t_start) / 1000.0;
    if (!rc && job->manifest) rc = write_manifest(job, st);
    items_free(items, n_owned);
    free(todo);
    ts_dataset_free_list(names, n);
    return rc;
}

int ts_folder_job_exit(const ts_folder_job *job, const ts_folder_stats *st, const char *extra) {
    printf("{\"out_dir\": ");
    ts_json_write_string(stdout, job->out_dir);
    printf(", \"shard\": [%d, %d], \"images\": %d, \"computed\": %d, \"skipped\": %d, "
           "\"failed\": %d, %s, \"seconds\": %.1f, \"interrupted\": %s}\n",
           job->shard->index, job->shard->count, st->owned, st->done, st->skipped, st->failed,
           extra, st->seconds, st->interrupted ? "true" : "false");
    fflush(stdout);
    fprintf(stderr, "%s: %d images, %d computed, %d skipped, %d failed, in %.1f s\n", job->what,
            st->owned, st->done, st->skipped, st->failed, st->seconds);
    if (st->interrupted) {
        fprintf(stderr,
                "tinysam: %s: stopped by %s after %d images; %d left: run the same command "
                "again to resume (exit status %d)\n",
                job->what, signal_name(st->interrupted), st->done + st->skipped + st->failed,
                st->owned - st->done - st->skipped - st->failed, TS_EXIT_INTERRUPTED);
        return TS_EXIT_INTERRUPTED;
    }
    if (st->failed) {
        fprintf(stderr, "tinysam: %s: %d of %d images failed (listed in %s/_failed/); first: %s\n",
                job->what, st->failed, st->owned, job->out_dir, st->first_failure);
        return 1;
    }
    return 0;
}
