/* test_integrity.c - corrupted checkpoints are refused (issue 20): every .pth ZIP record is
 * checked against its CRC-32 and every local header against the central directory; the
 * reference CRCs are zlib's, computed here over whole records (the reader splits records
 * into pieces and combines their CRCs). */
#include "core.h"
#include "io/tensor_map.h"
#include "io/zip.h"
#include "model/sam.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zlib.h>

#define ZIP32 "models/tinysam_vit_t_random.pth"

typedef struct {
    uint8_t *b;
    size_t n;
} file_t;

static file_t read_all(const char *path) {
    file_t f = {0};
    if (ts_read_file(path, (size_t)1 << 30, &f.b, &f.n) != 0) f.b = NULL;
    return f;
}

static int write_all(const char *path, const file_t *f) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    int ok = fwrite(f->b, 1, f->n, fp) == f->n;
    return fclose(fp) == 0 && ok ? 0 : -1;
}

/* Loads the modified copy; returns the status and the message in msg. */
static int load_copy(const file_t *f, const char *name, char *msg, size_t cap) {
    const char *path = tmp_path(name);
    if (write_all(path, f)) return 1;
    ts_tensor_map *m = NULL;
    int rc = ts_map_load(path, &m);
    snprintf(msg, cap, "%s", tinysam_last_error());
    ts_map_free(m);
    remove(path);
    return rc;
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The largest record of the archive, and the one that ends with name_end. */
static const ts_zip_entry *largest(const ts_zip *z) {
    const ts_zip_entry *best = &z->e[0];
    for (int i = 1; i < z->n; i++)
        if (z->e[i].size > best->size) best = &z->e[i];
    return best;
}
static const ts_zip_entry *ending(const ts_zip *z, const char *end) {
    for (int i = 0; i < z->n; i++) {
        size_t l = strlen(z->e[i].name), k = strlen(end);
        if (l >= k && !strcmp(z->e[i].name + l - k, end)) return &z->e[i];
    }
    return NULL;
}

/* The fixture's directory CRCs are zlib's over each whole record, and it loads. */
static void test_fixture_crcs(void) {
    if (!fixture_exists(ZIP32)) SKIP("fixtures missing");
    file_t f = read_all(fixture(ZIP32));
    REQUIRE(f.b, "read %s", ZIP32);
    ts_zip z;
    REQUIRE(ts_zip_open(f.b, f.n, &z) == 0, "%s", tinysam_last_error());
    int bad = 0;
    for (int i = 0; i < z.n; i++)
        bad += (uint32_t)crc32_z(0, z.e[i].data, (z_size_t)z.e[i].size) != z.e[i].crc;
    CHECK(bad == 0, "%d of %d records with a CRC other than zlib's", bad, z.n);
    CHECK(ts_zip_verify(&z) == 0, "%s", tinysam_last_error());
    ts_zip_close(&z);
    free(f.b);
}

/* 4 KiB of flipped bytes inside a tensor record, one byte inside the pickle: refused, the
 * record named. */
static void test_flipped_records(void) {
    if (!fixture_exists(ZIP32)) SKIP("fixtures missing");
    file_t f = read_all(fixture(ZIP32));
    REQUIRE(f.b, "read %s", ZIP32);
    ts_zip z;
    REQUIRE(ts_zip_open(f.b, f.n, &z) == 0, "%s", tinysam_last_error());
    const ts_zip_entry *t = largest(&z), *pkl = ending(&z, "/data.pkl");
    REQUIRE(t->size >= 8192 && pkl, "records");
    size_t t_off = (size_t)(t->data - f.b), p_off = (size_t)(pkl->data - f.b),
           p_size = (size_t)pkl->size;
    char t_name[256], p_name[256], want[400], msg[1024];
    snprintf(t_name, sizeof t_name, "%s", t->name);
    snprintf(p_name, sizeof p_name, "%s", pkl->name);
    ts_zip_close(&z);

    for (size_t k = 0; k < 4096; k++) f.b[t_off + 1000 + k] ^= 0x5a;
    int rc = load_copy(&f, "flip_tensor.pth", msg, sizeof msg);
    snprintf(want, sizeof want, "record '%s' fails its CRC-32 check (file corrupted?)", t_name);
    CHECK(rc == TINYSAM_E_FORMAT && strstr(msg, want), "rc %d: %s", rc, msg);
    CHECK(strstr(msg, "flip_tensor.pth: "), "the file is named: %s", msg);
    for (size_t k = 0; k < 4096; k++) f.b[t_off + 1000 + k] ^= 0x5a;

    f.b[p_off + p_size / 2] ^= 0x01;
    rc = load_copy(&f, "flip_pickle.pth", msg, sizeof msg);
    snprintf(want, sizeof want, "record '%s' fails its CRC-32 check", p_name);
    CHECK(rc == TINYSAM_E_FORMAT && strstr(msg, want), "rc %d: %s", rc, msg);
    free(f.b);
}

/* Local headers that disagree with the central directory: the name, the sizes (zero under
 * flag bit 3, so any value is a disagreement), the method, the data descriptor's CRC. */
static void test_local_headers(void) {
    if (!fixture_exists(ZIP32)) SKIP("fixtures missing");
    file_t f = read_all(fixture(ZIP32));
    REQUIRE(f.b, "read %s", ZIP32);
    ts_zip z;
    REQUIRE(ts_zip_open(f.b, f.n, &z) == 0, "%s", tinysam_last_error());
    const ts_zip_entry *t = largest(&z);
    char name[256], want[400], msg[1024];
    snprintf(name, sizeof name, "%s", t->name);
    size_t data = (size_t)(t->data - f.b), size = (size_t)t->size;
    ts_zip_close(&z);
    /* the local header: walk back from the data over the extra field and the name */
    size_t nl = strlen(name), loff = 0;
    for (size_t o = data - nl - 30; o + 30 + nl <= data; o--) {
        if (rd32(f.b + o) == 0x04034b50 && !memcmp(f.b + o + 30, name, nl)) {
            loff = o;
            break;
        }
        if (o == 0 || data - o > 70000) break;
    }
    REQUIRE(loff, "local header of %s", name);
    snprintf(want, sizeof want, "local header of '%s' disagrees with the central directory",
             name);
    static const struct {
        const char *what;
        size_t off; /* from the local header, or (size_t)-1: the descriptor's CRC */
    } cases[] = {{"name", 30}, {"compressed size", 18}, {"size", 22}, {"method", 8},
                 {"descriptor CRC", (size_t)-1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t at = cases[c].off == (size_t)-1 ? data + size + 4 : loff + cases[c].off;
        REQUIRE(cases[c].off != (size_t)-1 || rd32(f.b + data + size) == 0x08074b50,
                "descriptor signature");
        f.b[at] ^= 0x10;
        int rc = load_copy(&f, "local_header.pth", msg, sizeof msg);
        CHECK(rc == TINYSAM_E_FORMAT && strstr(msg, want), "%s: rc %d: %s", cases[c].what, rc,
              msg);
        f.b[at] ^= 0x10;
    }
    free(f.b);
}

static void le(uint8_t **p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) *(*p)++ = (uint8_t)(v >> 8 * i);
}

/* One stored record of 9 MiB + 3 bytes (three CRC pieces, the last one short), local header
 * with CRC and sizes (no descriptor): verified; a byte flipped in the last piece is found. */
static void test_large_record(void) {
    const size_t n = (9u << 20) + 3;
    const char *name = "big/data/0";
    size_t nl = strlen(name), total = 30 + nl + n + 46 + nl + 22;
    uint8_t *buf = malloc(total), *p = buf;
    REQUIRE(buf, "alloc");
    uint64_t x = 88172645463325252ull;
    uint8_t *data = buf + 30 + nl;
    for (size_t i = 0; i < n; i++) x ^= x << 13, x ^= x >> 7, x ^= x << 17, data[i] = (uint8_t)x;
    uint32_t crc = (uint32_t)crc32_z(0, data, n);
    le(&p, 0x04034b50, 4), le(&p, 20, 2), le(&p, 0, 2), le(&p, 0, 2), le(&p, 0, 4);
    le(&p, crc, 4), le(&p, n, 4), le(&p, n, 4), le(&p, nl, 2), le(&p, 0, 2);
    memcpy(p, name, nl), p += nl + n;
    size_t cd = (size_t)(p - buf);
    le(&p, 0x02014b50, 4), le(&p, 20, 2), le(&p, 20, 2), le(&p, 0, 2), le(&p, 0, 2);
    le(&p, 0, 4), le(&p, crc, 4), le(&p, n, 4), le(&p, n, 4), le(&p, nl, 2), le(&p, 0, 2);
    le(&p, 0, 2), le(&p, 0, 2), le(&p, 0, 2), le(&p, 0, 4), le(&p, 0, 4);
    memcpy(p, name, nl), p += nl;
    le(&p, 0x06054b50, 4), le(&p, 0, 4), le(&p, 1, 2), le(&p, 1, 2);
    le(&p, 46 + nl, 4), le(&p, cd, 4), le(&p, 0, 2);
    REQUIRE((size_t)(p - buf) == total, "layout %zu vs %zu", (size_t)(p - buf), total);
    ts_zip z;
    REQUIRE(ts_zip_open(buf, total, &z) == 0, "%s", tinysam_last_error());
    CHECK(ts_zip_verify(&z) == 0, "intact: %s", tinysam_last_error());
    data[n - 2] ^= 0x80;
    CHECK(ts_zip_verify(&z) == TINYSAM_E_FORMAT && strstr(tinysam_last_error(), "'big/data/0'"),
          "flipped: %s", tinysam_last_error());
    data[n - 2] ^= 0x80;
    data[5u << 20] ^= 0x01; /* the second piece */
    CHECK(ts_zip_verify(&z) == TINYSAM_E_FORMAT, "flipped in piece 2");
    ts_zip_close(&z);
    free(buf);
}

/* Masks of the point (380, 300) on picture1: low-res logits and IoU, bit for bit. */
static int predict_point(tinysam_model *m, const tinysam_image *img, float *low_res, float *iou) {
    tinysam_embedding *e;
    if (tinysam_encode(m, img, &e)) return -1;
    float pt[2] = {380, 300};
    int lab[1] = {1};
    tinysam_prompt p = {.n_points = 1, .points = pt, .labels = lab};
    tinysam_prediction pred;
    int rc = tinysam_predict(m, e, &p, 0, &pred);
    if (!rc) {
        memcpy(low_res, pred.low_res, sizeof(float) * 3 * 256 * 256);
        memcpy(iou, pred.iou, sizeof pred.iou);
        tinysam_prediction_free(&pred);
    }
    tinysam_embedding_free(e);
    return rc;
}

/* Checkpoints of a DistributedDataParallel ("module.") or torch.compile ("_orig_mod.") model:
 * the fixture's tensors renamed, written by a small generator (safetensors), load as the
 * plain model, say so in the map, and give identical masks. A partly prefixed file is not
 * stripped (and so not recognised). */
static void test_wrapper_prefixes(void) {
    if (!fixture_exists(ZIP32)) SKIP("fixtures missing");
    tinysam_model *plain;
    REQUIRE(tinysam_model_load(fixture(ZIP32), &plain) == 0, "%s", tinysam_last_error());
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0, "%s",
            tinysam_last_error());
    /* the masks under the sanitizers: the loaded tensors are compared instead (same names,
     * same bytes: the same network) */
    int run_net = !test_sanitized();
    float *lr0 = malloc(sizeof(float) * 3 * 256 * 256), *lr1 = malloc(sizeof(float) * 3 * 256 * 256);
    float iou0[3], iou1[3];
    REQUIRE(lr0 && lr1, "alloc");
    if (run_net) REQUIRE(predict_point(plain, &img, lr0, iou0) == 0, "%s", tinysam_last_error());
    static const char *prefixes[] = {"module.", "_orig_mod."};
    for (int k = 0; k < 3; k++) {
        ts_tensor_map *m;
        REQUIRE(ts_map_load(fixture(ZIP32), &m) == 0, "%s", tinysam_last_error());
        const char *pre = prefixes[k % 2];
        for (int i = 0; i < m->n; i++) {
            if (k == 2 && i == 5) continue; /* one key without the prefix */
            size_t l = strlen(pre) + strlen(m->t[i].name) + 1;
            char *nm = malloc(l);
            REQUIRE(nm, "alloc");
            snprintf(nm, l, "%s%s", pre, m->t[i].name);
            free(m->t[i].name);
            m->t[i].name = nm;
        }
        const char *path = tmp_path(k == 2 ? "partly_prefixed.safetensors" : "prefixed.safetensors");
        REQUIRE(ts_safetensors_save(path, m, 0, NULL, NULL) == 0, "%s", tinysam_last_error());
        ts_map_free(m);
        tinysam_model *w;
        int rc = tinysam_model_load(path, &w);
        if (k == 2) {
            CHECK(rc == TINYSAM_E_UNSUPPORTED, "a partly prefixed file is not stripped: rc %d", rc);
            remove(path);
            continue;
        }
        REQUIRE(rc == 0, "%s: %s", pre, tinysam_last_error());
        CHECK(!strcmp(w->map->key_prefix, pre), "key_prefix '%s'", w->map->key_prefix);
        int same = w->map->n == plain->map->n;
        for (int i = 0; same && i < w->map->n; i++) {
            const ts_tensor *a = &w->map->t[i], *b = ts_map_get(plain->map, a->name);
            same = b && a->numel == b->numel && a->dtype == b->dtype &&
                   !memcmp(a->data, b->data, (size_t)a->numel * (a->dtype == TS_DTYPE_I64 ? 8 : 4));
        }
        CHECK(same, "%s: the stripped tensors equal the plain model's", pre);
        if (run_net) {
            REQUIRE(predict_point(w, &img, lr1, iou1) == 0, "%s", tinysam_last_error());
            CHECK(!memcmp(lr0, lr1, sizeof(float) * 3 * 256 * 256) && !memcmp(iou0, iou1, sizeof iou0),
                  "%s: masks differ from the plain model's", pre);
        }
        tinysam_model_free(w);
        remove(path);
    }
    free(lr0), free(lr1);
    tinysam_image_free(&img);
    tinysam_model_free(plain);
}

/* Safetensors written by convert carry the XXH3 digest of their data section; a flipped data
 * byte is refused, a file without the digest (the key renamed) still loads, an unknown
 * digest is refused. The digest is recomputed here on a second code path: stdio, the header
 * length parsed by hand, libxxhash's streaming API over odd-sized chunks. */
static void test_safetensors_digest(void) {
    if (!fixture_exists(ZIP32)) SKIP("fixtures missing");
    CHECK(XXH3_64bits("", 0) == 0x2D06800538D394C2ull, "XXH3 of the empty input");
    tinysam_model *m;
    REQUIRE(tinysam_model_load(fixture(ZIP32), &m) == 0, "%s", tinysam_last_error());
    const char *path = tmp_path("digest.safetensors");
    REQUIRE(tinysam_model_save_safetensors(m, path) == 0, "%s", tinysam_last_error());
    tinysam_model_free(m);
    file_t f = read_all(path);
    REQUIRE(f.b && f.n > 8, "read back");
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | f.b[i];
    REQUIRE(hl < f.n - 8, "header length");
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    for (size_t o = 8 + hl; o < f.n; o += 1009)
        XXH3_64bits_update(st, f.b + o, f.n - o < 1009 ? f.n - o : 1009);
    char want[64];
    snprintf(want, sizeof want, "\"tinysam.digest\":\"xxh3-64:%016llx\"",
             (unsigned long long)XXH3_64bits_digest(st));
    XXH3_freeState(st);
    char *hdr = malloc(hl + 1);
    REQUIRE(hdr, "alloc");
    memcpy(hdr, f.b + 8, hl), hdr[hl] = 0;
    char *key = strstr(hdr, want);
    CHECK(key != NULL, "the header holds %s", want);
    ts_tensor_map *map = NULL;
    CHECK(ts_map_load(path, &map) == 0 && !strcmp(map->integrity, "xxh3-64"), "intact: %s",
          tinysam_last_error());
    ts_map_free(map);

    char msg[1024];
    f.b[8 + hl + (f.n - 8 - hl) / 3] ^= 0x04; /* one data byte */
    int rc = load_copy(&f, "digest_flip.safetensors", msg, sizeof msg);
    CHECK(rc == TINYSAM_E_FORMAT && strstr(msg, "fails its XXH3 digest check (file corrupted?)"),
          "flipped: rc %d: %s", rc, msg);
    if (key) {
        size_t at = 8 + (size_t)(key - hdr) + strlen("\"tinysam.diges");
        f.b[at] = 'X'; /* "tinysam.digesX": a file from elsewhere, without our digest */
        rc = load_copy(&f, "digest_none.safetensors", msg, sizeof msg);
        CHECK(rc == 0, "without a digest it loads (flipped byte and all): %s", msg);
        f.b[at] = 't';
        at = 8 + (size_t)(key - hdr) + strlen("\"tinysam.digest\":\"");
        memcpy(f.b + at, "md5-064", 7);
        rc = load_copy(&f, "digest_unknown.safetensors", msg, sizeof msg);
        CHECK(rc == TINYSAM_E_FORMAT && strstr(msg, "unknown data digest"), "unknown: %s", msg);
    }
    free(hdr);
    free(f.b);
    remove(path);
}

int main(void) {
    RUN(test_safetensors_digest);
    RUN(test_wrapper_prefixes);
    RUN(test_large_record);
    RUN(test_fixture_crcs);
    RUN(test_flipped_records);
    RUN(test_local_headers);
    return test_summary();
}
