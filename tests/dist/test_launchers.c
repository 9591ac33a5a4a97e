/* test_launchers.c - dataset jobs under the launchers users run them with: a real single-node
 * Slurm cluster (sbatch --array=0-3, srun -n 2) and Open MPI's mpirun -np 3 (launched by
 * tests/dist/launchers.sh, which starts and stops the cluster). The union of the shards'
 * outputs must be byte-identical to one unsharded run, every image exactly once (the shards'
 * manifests), and each task must say on stderr which shard it took and why.
 * Every build runs the launchers on the scene oracle (seconds); the default build also runs
 * the network: `everything` under the array and mpirun, `embed` under srun and mpirun. */
#include "cli_run.h"
#include "core.h"
#include "dataset_gen.h"
#include "io/json.h"
#include "test.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODEL "models/tinysam_vit_t_random.pth"
#define N_IMAGES 8

static char g_dir[PATH_MAX], g_imgs[PATH_MAX + 16], g_scenes[PATH_MAX + 16], g_bin[PATH_MAX];

/* Names of the regular files in dir ending in ext, sorted, '\n'-joined; returns the count. */
static int list_ext(const char *dir, const char *ext, char *out, size_t cap) {
    DIR *d = opendir(dir);
    out[0] = 0;
    if (!d) return -1;
    char *names[512];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 512) {
        size_t l = strlen(de->d_name), e = strlen(ext);
        if (l > e && !strcmp(de->d_name + l - e, ext)) names[n++] = strdup(de->d_name);
    }
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && strcmp(names[j], names[j - 1]) < 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (int i = 0; i < n; i++) {
        if (strlen(out) + strlen(names[i]) + 2 < cap) strcat(strcat(out, names[i]), "\n");
        free(names[i]);
    }
    return n;
}

/* The launcher's output dir against the serial one: same files, same bytes; the manifests
 * account for every image exactly once over `shards` shards. */
static void check_union(const char *what, const char *serial, const char *dir, const char *ext,
                        int shards) {
    char ls[8192], ld[8192];
    int ns = list_ext(serial, ext, ls, sizeof ls), nd = list_ext(dir, ext, ld, sizeof ld);
    CHECK(ns == N_IMAGES && nd == ns && !strcmp(ls, ld), "%s: outputs [%s] vs serial [%s]", what,
          ld, ls);
    for (char *p = ld, *e; nd == ns && *p; p = e + 1) {
        e = strchr(p, '\n');
        *e = 0;
        char a[PATH_MAX + 300], b[PATH_MAX + 300];
        snprintf(a, sizeof a, "%s/%.250s", serial, p);
        snprintf(b, sizeof b, "%s/%.250s", dir, p);
        CHECK(cli_same_file(a, b), "%s: %s differs from the serial run's", what, p);
    }
    int done = 0, images = 0;
    for (int s = 0; s < shards; s++) {
        char mf[PATH_MAX + 64];
        snprintf(mf, sizeof mf, "%s/_manifest/%d.json", dir, s);
        ts_json *j = NULL;
        if (ts_json_load(mf, &j)) {
            CHECK(0, "%s: no manifest for shard %d", what, s);
            continue;
        }
        const ts_json *sh = ts_json_get(j, "shard");
        CHECK(sh && ts_json_num(sh, "count", 0) == shards && ts_json_num(sh, "index", -1) == s,
              "%s: manifest %d names another shard", what, s);
        int own = (int)ts_json_num(j, "images", -1);
        CHECK(own == (N_IMAGES - s + shards - 1) / shards, "%s: shard %d had %d images", what, s,
              own);
        done += (int)ts_json_num(j, "done", 0);
        images += own;
        CHECK(ts_json_num(j, "failed", -1) == 0 && ts_json_num(j, "skipped", -1) == 0,
              "%s: shard %d failed or skipped images", what, s);
        ts_json_free(j);
    }
    CHECK(done == N_IMAGES && images == N_IMAGES, "%s: %d images computed over the shards, not %d",
          what, done, N_IMAGES);
}

/* A log file mentions needle. */
static int log_has(const char *file, const char *needle) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/launch/logs/%s", g_dir, file);
    uint8_t *b = NULL;
    size_t n = 0;
    int ok = ts_read_file(p, 1 << 22, &b, &n) == 0 && memmem(b, n, needle, strlen(needle));
    free(b);
    return ok;
}

static int g_launch_rc = -1;

/* Serial runs, then the launchers; returns 0 when set up (else a SKIP reason in why). */
static int run_all(int network, const char **why) {
    if (access("/usr/sbin/slurmctld", X_OK) && system("command -v slurmctld >/dev/null 2>&1")) {
        *why = "Slurm is not installed (.ci/run installs slurm-wlm)";
        return -1;
    }
    if (system("command -v mpirun >/dev/null 2>&1")) {
        *why = "mpirun is not installed (.ci/run installs openmpi-bin)";
        return -1;
    }
    if (getuid() != 0) {
        *why = "the local Slurm cluster needs root";
        return -1;
    }
    char rel[PATH_MAX];
    snprintf(rel, sizeof rel, "%s", tmp_path("launch"));
    cli_rm_rf(rel);
    if (mkdir(rel, 0755) || !realpath(rel, g_dir)) return -2;
    const char *b = getenv("BUILD");
    char binrel[PATH_MAX];
    snprintf(binrel, sizeof binrel, "%s/tinysam", b && *b ? b : "build");
    if (!realpath(binrel, g_bin)) return -2;
    snprintf(g_imgs, sizeof g_imgs, "%s/images", g_dir);
    snprintf(g_scenes, sizeof g_scenes, "%s/scenes", g_dir);
    if (dg_make_dataset(g_imgs, g_scenes, N_IMAGES)) return -2;
    static char ev[16384], em[16384], args[65536], model[PATH_MAX];
    if (network) {
        if (!realpath(fixture(MODEL), model)) return -2;
        snprintf(ev, sizeof ev,
                 "everything --model %s --images %s --points-per-side 4 --pred-iou-thresh 0 "
                 "--stability-score-thresh 0 --box-nms-thresh 0.95",
                 model, g_imgs);
        snprintf(em, sizeof em, "embed --model %s --images %s", model, g_imgs);
    } else {
        snprintf(ev, sizeof ev, "everything --oracle-scenes %s --images %s --points-per-side 8",
                 g_scenes, g_imgs);
        em[0] = 0;
    }
    /* the serial references */
    snprintf(args, sizeof args, "%s --out-dir %s/serial --quiet", ev, g_dir);
    if (cli_run(args)) return -3;
    if (network) {
        snprintf(args, sizeof args, "%s --out-dir %s/serial_embed --quiet", em, g_dir);
        if (cli_run(args)) return -3;
    }
    snprintf(args, sizeof args, "sh tests/dist/launchers.sh %s %s/launch '%s' '%s' > %s/launch.log 2>&1",
             g_bin, g_dir, ev, em, g_dir);
    int st = system(args);
    g_launch_rc = st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
    return 0;
}

static void show_log(void) {
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/launch.log", g_dir);
    uint8_t *b = NULL;
    size_t n = 0;
    if (ts_read_file(p, 1 << 20, &b, &n) == 0) printf("%.*s", (int)n, (char *)b);
    free(b);
}

static void test_launchers(void) {
    const int network = !test_sanitized() && !test_portable_kernels() && fixture_exists(MODEL);
    const char *why = NULL;
    int rc = run_all(network, &why);
    if (rc == -1) SKIP(why);
    REQUIRE(rc == 0, "setup failed (%d): %s", rc, cli_err);
    if (g_launch_rc == 3) {
        show_log();
        SKIP("launchers.sh found no Slurm or mpirun");
    }
    if (g_launch_rc != 0) show_log();
    REQUIRE(g_launch_rc == 0, "launchers.sh exit status %d", g_launch_rc);
    char serial[PATH_MAX + 32], d[PATH_MAX + 32];
    snprintf(serial, sizeof serial, "%s/serial", g_dir);
    snprintf(d, sizeof d, "%s/launch/array", g_dir);
    check_union("sbatch --array=0-3 everything", serial, d, ".json", 4);
    snprintf(d, sizeof d, "%s/launch/mpi", g_dir);
    check_union("mpirun -np 3 everything", serial, d, ".json", 3);
    CHECK(log_has("array-2.err", "shard 2/4 (Slurm array: SLURM_ARRAY_TASK_ID=2"),
          "array task 2 did not say which shard it took");
    CHECK(log_has("mpi-1.err", "shard 1/3 (mpirun: OMPI_COMM_WORLD_RANK=1"),
          "mpirun rank 1 did not say which shard it took");
    if (network) {
        char se[PATH_MAX + 32];
        snprintf(se, sizeof se, "%s/serial_embed", g_dir);
        snprintf(d, sizeof d, "%s/launch/srun_embed", g_dir);
        check_union("srun -n 2 embed", se, d, ".npy", 2);
        snprintf(d, sizeof d, "%s/launch/mpi_embed", g_dir);
        check_union("mpirun -np 3 embed", se, d, ".npy", 3);
        CHECK(log_has("srun-1.err", "shard 1/2 (srun: SLURM_PROCID=1"),
              "srun task 1 did not say which shard it took");
    } else {
        snprintf(d, sizeof d, "%s/launch/srun", g_dir);
        check_union("srun -n 2 everything", serial, d, ".json", 2);
        CHECK(log_has("srun-1.err", "shard 1/2 (srun: SLURM_PROCID=1"),
              "srun task 1 did not say which shard it took");
    }
    printf("  %s: sbatch --array=0-3, srun -n 2 and mpirun -np 3 each equal to the serial run\n",
           network ? "network (everything, embed)" : "scene oracle");
}

int main(void) {
    RUN(test_launchers);
    if (g_dir[0] && !t_failed_checks) cli_rm_rf(g_dir);
    return test_summary();
}
