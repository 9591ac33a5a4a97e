/* pth.c - PyTorch checkpoints (torch.save) read as data: the ZIP container and the legacy
 * stream container, and a pickle *interpreter* that understands only the opcodes and
 * globals a state_dict needs (spec TINYSAM.md section 2.2-2.3). Nothing is executed:
 * GLOBAL resolves against an allow-list, REDUCE only rebuilds tensors, dicts and sets.
 * A GLOBAL outside the allow-list is kept as an opaque class name: it may only be
 * instantiated without arguments (NEWOBJ / REDUCE with an empty tuple) and given a dict
 * state by BUILD, which is how torch.save(model) pickles an nn.Module tree; such a tree
 * is flattened to a state dict by io/module_tree.c. */
#include "core.h"
#include "io/tensor_map.h"
#include "io/tensor_map_internal.h"
#include "io/zip.h"
#include "io/module_tree.h"
#include "io/pickle_value.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PICKLE_MAX_STACK 100000     /* values on the stack */
#define PICKLE_MAX_MARKS 10000      /* nested MARKs */
#define PICKLE_MAX_MEMO 1000000     /* memo slots */
#define PICKLE_MAX_STRING (1 << 20) /* bytes in one string */
#define PICKLE_MAX_ITEMS (1 << 22)  /* items in one container */
#define PICKLE_MAX_VALUES (1 << 21) /* values one pickle may create (~16 per tensor) */
#define PTH_MAX_TENSORS 100000
/* Loaded bytes may exceed the file's size (float16 -> float32 doubles it, views may share a
 * storage), but not by more than this factor plus PTH_EXPANSION_SLACK: a small file must not
 * be able to request gigabytes through overlapping or zero-stride views. */
#define PTH_MAX_EXPANSION 4
#define PTH_EXPANSION_SLACK ((uint64_t)1 << 24)

/* ------------------------------------------------------------------ values */

/* All values of one load come from fixed-size chunks and are freed together. */
#define HEAP_CHUNK 4096
typedef struct {
    val **chunks;
    size_t n, n_chunks;
} heap;

static val *heap_at(const heap *h, size_t i) {
    return &h->chunks[i / HEAP_CHUNK][i % HEAP_CHUNK];
}

typedef struct {
    const uint8_t *p, *end, *start;
    heap *h;
    val **stack;
    int sp;
    int marks[PICKLE_MAX_MARKS];
    int n_marks;
    val **memo;
    size_t memo_cap, memo_count;
    const char *what; /* for messages */
} vm;

/* NULL when out of memory or past PICKLE_MAX_VALUES; push() reports either. */
static val *vnew(heap *h, vkind k) {
    if (h->n >= PICKLE_MAX_VALUES) return NULL;
    if (h->n == h->n_chunks * HEAP_CHUNK) {
        val **nc = realloc(h->chunks, (h->n_chunks + 1) * sizeof *nc);
        if (!nc) return NULL;
        h->chunks = nc;
        if (!(nc[h->n_chunks] = calloc(HEAP_CHUNK, sizeof(val)))) return NULL;
        h->n_chunks++;
    }
    val *v = heap_at(h, h->n++);
    v->kind = k;
    return v;
}

static void heap_free(heap *h) {
    for (size_t i = 0; i < h->n; i++) {
        val *v = heap_at(h, i);
        free(v->s);
        free(v->items);
        free(v->geo);
    }
    for (size_t i = 0; i < h->n_chunks; i++) free(h->chunks[i]);
    free(h->chunks);
}

static int vappend(val *c, val *x) {
    if (c->n >= PICKLE_MAX_ITEMS)
        return ts_error(TINYSAM_E_FORMAT, "pickle: container with more than %d items",
                        PICKLE_MAX_ITEMS);
    if (c->n == c->cap) {
        int nc = c->cap ? c->cap * 2 : 8;
        val **ni = realloc(c->items, (size_t)nc * sizeof *ni);
        if (!ni) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        c->items = ni;
        c->cap = nc;
    }
    c->items[c->n++] = x;
    return 0;
}

/* Dicts store key, value alternately in items; n counts stored values (2 per pair).
 * Keys are not deduplicated here (that would be quadratic on hostile input): a
 * repeated state_dict key is rejected when the tensors are collected. */
static int dict_set(val *d, val *k, val *v) {
    int rc = vappend(d, k);
    return rc ? rc : vappend(d, v);
}

/* ------------------------------------------------------------------ interpreter */

#define FAIL(...) return ts_error(TINYSAM_E_FORMAT, __VA_ARGS__)

static long off(const vm *m) {
    return (long)(m->p - m->start);
}

static int need(vm *m, size_t n) {
    if ((size_t)(m->end - m->p) < n)
        FAIL("%s: pickle truncated at offset %ld", m->what, off(m));
    return 0;
}

/* Why vnew() failed: the value limit (a format error) or memory. */
static int nomem(vm *m) {
    if (m->h->n >= PICKLE_MAX_VALUES)
        FAIL("%s: pickle creates more than %d values", m->what, PICKLE_MAX_VALUES);
    return ts_error(TINYSAM_E_NOMEM, "out of memory");
}

static int push(vm *m, val *v) {
    if (!v) return nomem(m);
    if (m->sp >= PICKLE_MAX_STACK)
        FAIL("%s: pickle stack deeper than %d", m->what, PICKLE_MAX_STACK);
    m->stack[m->sp++] = v;
    return 0;
}

static val *pop(vm *m) {
    int floor = m->n_marks ? m->marks[m->n_marks - 1] : 0;
    if (m->sp <= floor) return NULL;
    return m->stack[--m->sp];
}

static int pop_mark(vm *m, int *first) {
    if (!m->n_marks) FAIL("%s: pickle MARK missing at offset %ld", m->what, off(m));
    *first = m->marks[--m->n_marks];
    return 0;
}

static uint64_t rdle(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int memo_put(vm *m, size_t idx) {
    if (idx >= PICKLE_MAX_MEMO) FAIL("%s: pickle memo index %zu too large", m->what, idx);
    if (!m->sp) FAIL("%s: pickle memo store on empty stack", m->what);
    if (idx >= m->memo_cap) {
        size_t nc = m->memo_cap ? m->memo_cap : 256;
        while (nc <= idx) nc *= 2;
        val **nm = realloc(m->memo, nc * sizeof *nm);
        if (!nm) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        memset(nm + m->memo_cap, 0, (nc - m->memo_cap) * sizeof *nm);
        m->memo = nm;
        m->memo_cap = nc;
    }
    if (!m->memo[idx]) m->memo_count++;
    m->memo[idx] = m->stack[m->sp - 1];
    return 0;
}

static int memo_get(vm *m, size_t idx) {
    if (idx >= m->memo_cap || !m->memo[idx])
        FAIL("%s: pickle memo slot %zu is empty", m->what, idx);
    return push(m, m->memo[idx]);
}

static int push_str(vm *m, size_t len, int unicode) {
    (void)unicode;
    if (len > PICKLE_MAX_STRING) FAIL("%s: pickle string of %zu bytes is too long", m->what, len);
    if (need(m, len)) return TINYSAM_E_FORMAT;
    val *v = vnew(m->h, V_STR);
    if (!v) return nomem(m);
    if (!(v->s = malloc(len + 1))) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    memcpy(v->s, m->p, len);
    v->s[len] = 0;
    v->n = (int)len;
    m->p += len;
    return push(m, v);
}

static int resolve_global(vm *m, const char *mod, const char *name) {
    val *g = vnew(m->h, V_GLOBAL);
    if (!g) return nomem(m);
    static const struct { const char *name; ts_dtype t; } storages[] = {
        {"FloatStorage", TS_DTYPE_F32}, {"HalfStorage", TS_DTYPE_F16},
        {"BFloat16Storage", TS_DTYPE_BF16}, {"DoubleStorage", TS_DTYPE_F64},
        {"LongStorage", TS_DTYPE_I64}, {"IntStorage", TS_DTYPE_I32},
        {"CharStorage", TS_DTYPE_I8}, {"ByteStorage", TS_DTYPE_U8}, {"BoolStorage", TS_DTYPE_U8},
    };
    if (!strcmp(mod, "collections") && !strcmp(name, "OrderedDict")) g->g = G_ORDERED_DICT;
    else if ((!strcmp(mod, "builtins") || !strcmp(mod, "__builtin__")) && !strcmp(name, "set"))
        g->g = G_SET; /* a module's _non_persistent_buffers_set */
    else if (!strcmp(mod, "torch._utils") && !strcmp(name, "_rebuild_tensor_v2"))
        g->g = G_REBUILD_TENSOR;
    else if (!strcmp(mod, "torch._utils") && !strcmp(name, "_rebuild_parameter"))
        g->g = G_REBUILD_PARAMETER;
    else {
        int found = 0;
        if (!strcmp(mod, "torch"))
            for (size_t i = 0; i < sizeof storages / sizeof storages[0]; i++)
                if (!strcmp(name, storages[i].name)) {
                    g->g = G_STORAGE;
                    g->dtype = storages[i].t;
                    found = 1;
                }
        if (!found) {
            /* any other name: an opaque class (nothing is imported); the interpreter only lets
             * it be instantiated without arguments and given a dict state */
            size_t lm = strlen(mod), ln = strlen(name);
            if (!lm || !ln || !(g->s = malloc(lm + ln + 2)))
                return lm && ln ? ts_error(TINYSAM_E_NOMEM, "out of memory")
                                : ts_error(TINYSAM_E_FORMAT, "%s: pickle GLOBAL with an empty name",
                                           m->what);
            memcpy(g->s, mod, lm);
            g->s[lm] = '.';
            memcpy(g->s + lm + 1, name, ln + 1);
            g->n = (int)(lm + ln + 1);
            g->i = (int64_t)lm + 1;
            g->g = G_CLASS;
        }
    }
    return push(m, g);
}

static int read_line(vm *m, char *buf, size_t cap) {
    const uint8_t *nl = memchr(m->p, '\n', (size_t)(m->end - m->p));
    if (!nl || (size_t)(nl - m->p) >= cap)
        FAIL("%s: pickle GLOBAL malformed at offset %ld", m->what, off(m));
    memcpy(buf, m->p, (size_t)(nl - m->p));
    buf[nl - m->p] = 0;
    m->p = nl + 1;
    return 0;
}

static int tuple_ints(const val *t, int64_t *out, int64_t *n) {
    if (t->kind != V_TUPLE || t->n > TS_MAX_DIMS) return -1;
    for (int i = 0; i < t->n; i++) {
        if (t->items[i]->kind != V_INT) return -1;
        out[i] = t->items[i]->i;
    }
    *n = t->n;
    return 0;
}

/* cls() with no arguments: an OBJECT tagged with the class name. Anything with arguments
 * would be a call whose meaning we cannot know (a __reduce__ payload such as os.system). */
static int new_object(vm *m, const val *cls, const val *args) {
    if (args->n != 0)
        FAIL("%s: pickle calls '%s' with arguments at offset %ld (only module classes created "
             "without arguments are read; nothing is executed)",
             m->what, cls->s, off(m));
    val *o = vnew(m->h, V_OBJECT);
    if (!o) return nomem(m);
    if (!(o->s = strdup(cls->s))) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    o->n = cls->n;
    o->i = cls->i;
    return push(m, o);
}

static int do_reduce(vm *m) {
    val *args = pop(m), *fn = pop(m);
    if (!args || !fn || args->kind != V_TUPLE || fn->kind != V_GLOBAL)
        FAIL("%s: pickle REDUCE on something other than an allowed function at offset %ld",
             m->what, off(m));
    if (fn->g == G_ORDERED_DICT) {
        if (args->n != 0) FAIL("%s: OrderedDict with arguments", m->what);
        return push(m, vnew(m->h, V_DICT));
    }
    if (fn->g == G_CLASS) return new_object(m, fn, args);
    if (fn->g == G_SET) { /* set() or set(list): kept as a list of its items */
        val *l = vnew(m->h, V_LIST);
        if (!l) return nomem(m);
        if (args->n == 0) return push(m, l);
        if (args->n != 1 || args->items[0]->kind != V_LIST)
            FAIL("%s: set() with arguments other than one list at offset %ld", m->what, off(m));
        for (int i = 0; i < args->items[0]->n; i++) {
            int rc = vappend(l, args->items[0]->items[i]);
            if (rc) return rc;
        }
        return push(m, l);
    }
    if (fn->g == G_REBUILD_PARAMETER) {
        if (args->n < 1 || args->items[0]->kind != V_TENSOR)
            FAIL("%s: bad _rebuild_parameter", m->what);
        return push(m, args->items[0]);
    }
    if (fn->g != G_REBUILD_TENSOR) FAIL("%s: pickle calls a storage class", m->what);
    /* (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) */
    if (args->n < 4 || args->items[0]->kind != V_STORAGE || args->items[1]->kind != V_INT)
        FAIL("%s: bad _rebuild_tensor_v2 arguments at offset %ld", m->what, off(m));
    val *t = vnew(m->h, V_TENSOR);
    if (!t) return nomem(m);
    if (!(t->geo = calloc(1, sizeof *t->geo))) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    tgeom *g = t->geo;
    t->storage = args->items[0];
    t->dtype = t->storage->dtype;
    g->offset = args->items[1]->i;
    int64_t ns;
    if (tuple_ints(args->items[2], g->shape, &g->ndim) ||
        tuple_ints(args->items[3], g->stride, &ns) || ns != g->ndim)
        FAIL("%s: bad tensor size/stride at offset %ld", m->what, off(m));
    return push(m, t);
}

static int do_persid(vm *m) {
    val *pid = pop(m);
    /* ('storage', storage_class, key, location, numel[, view]) */
    if (!pid || pid->kind != V_TUPLE || pid->n < 5 || pid->items[0]->kind != V_STR ||
        strcmp(pid->items[0]->s, "storage") || pid->items[1]->kind != V_GLOBAL ||
        pid->items[1]->g != G_STORAGE || pid->items[2]->kind != V_STR ||
        pid->items[4]->kind != V_INT || pid->items[4]->i < 0)
        FAIL("%s: unsupported persistent id at offset %ld", m->what, off(m));
    val *s = vnew(m->h, V_STORAGE);
    if (!s) return nomem(m);
    if (!(s->s = strdup(pid->items[2]->s))) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    s->dtype = pid->items[1]->dtype;
    s->i = pid->items[4]->i;
    return push(m, s);
}

/* Runs one pickle from m->p to its STOP; *result gets the value left on the stack. */
static int run_pickle(vm *m, val **result) {
    m->sp = 0;
    m->n_marks = 0;
    /* each pickle of a legacy file has its own memo (MEMOIZE numbers from 0 again) */
    if (m->memo) memset(m->memo, 0, m->memo_cap * sizeof *m->memo);
    m->memo_count = 0;
    for (;;) {
        if (need(m, 1)) return TINYSAM_E_FORMAT;
        uint8_t op = *m->p++;
        int rc = 0, first = 0;
        val *v, *k, *x;
        switch (op) {
        case 0x80: /* PROTO */
            if (need(m, 1)) return TINYSAM_E_FORMAT;
            if (*m->p > 5) FAIL("%s: pickle protocol %d not supported", m->what, *m->p);
            m->p++;
            break;
        case 0x95: /* FRAME */
            if (need(m, 8)) return TINYSAM_E_FORMAT;
            m->p += 8;
            break;
        case '.': /* STOP */
            if (m->sp != 1 || m->n_marks)
                FAIL("%s: pickle ends with %d values on the stack", m->what, m->sp);
            *result = m->stack[0];
            return 0;
        case 'c': { /* GLOBAL */
            char mod[128], name[128];
            if ((rc = read_line(m, mod, sizeof mod)) || (rc = read_line(m, name, sizeof name)))
                return rc;
            rc = resolve_global(m, mod, name);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            x = pop(m);
            v = pop(m);
            if (!x || !v || x->kind != V_STR || v->kind != V_STR)
                FAIL("%s: bad STACK_GLOBAL at offset %ld", m->what, off(m));
            rc = resolve_global(m, v->s, x->s);
            break;
        case 'q': /* BINPUT */
            if (need(m, 1)) return TINYSAM_E_FORMAT;
            rc = memo_put(m, *m->p++);
            break;
        case 'r': /* LONG_BINPUT */
            if (need(m, 4)) return TINYSAM_E_FORMAT;
            rc = memo_put(m, rdle(m->p, 4));
            m->p += 4;
            break;
        case 0x94: /* MEMOIZE */
            rc = memo_put(m, m->memo_count);
            break;
        case 'h': /* BINGET */
            if (need(m, 1)) return TINYSAM_E_FORMAT;
            rc = memo_get(m, *m->p++);
            break;
        case 'j': /* LONG_BINGET */
            if (need(m, 4)) return TINYSAM_E_FORMAT;
            rc = memo_get(m, rdle(m->p, 4));
            m->p += 4;
            break;
        case '(': /* MARK */
            if (m->n_marks >= PICKLE_MAX_MARKS) FAIL("%s: pickle MARKs nested too deeply", m->what);
            m->marks[m->n_marks++] = m->sp;
            break;
        case ')': rc = push(m, vnew(m->h, V_TUPLE)); break;  /* EMPTY_TUPLE */
        case ']': rc = push(m, vnew(m->h, V_LIST)); break;   /* EMPTY_LIST */
        case '}': rc = push(m, vnew(m->h, V_DICT)); break;   /* EMPTY_DICT */
        case 'N': rc = push(m, vnew(m->h, V_NONE)); break;   /* NONE */
        case 0x88: case 0x89:                                /* NEWTRUE, NEWFALSE */
            if (!(v = vnew(m->h, V_BOOL))) return nomem(m);
            v->i = op == 0x88;
            rc = push(m, v);
            break;
        case 't': case 'l': case 'd': { /* TUPLE, LIST, DICT from the last MARK */
            if ((rc = pop_mark(m, &first))) return rc;
            int n = m->sp - first;
            if (op == 'd' && n % 2) FAIL("%s: pickle DICT with an odd item count", m->what);
            v = vnew(m->h, op == 't' ? V_TUPLE : op == 'l' ? V_LIST : V_DICT);
            if (!v) return nomem(m);
            for (int i = 0; i < n && !rc; i += op == 'd' ? 2 : 1)
                rc = op == 'd' ? dict_set(v, m->stack[first + i], m->stack[first + i + 1])
                               : vappend(v, m->stack[first + i]);
            if (rc) return rc;
            m->sp = first;
            rc = push(m, v);
            break;
        }
        case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
            int n = op - 0x84;
            v = vnew(m->h, V_TUPLE);
            if (!v) return nomem(m);
            val *it[3];
            for (int i = n - 1; i >= 0; i--)
                if (!(it[i] = pop(m)))
                    FAIL("%s: pickle stack underflow at offset %ld", m->what, off(m));
            for (int i = 0; i < n && !rc; i++) rc = vappend(v, it[i]);
            if (rc) return rc;
            rc = push(m, v);
            break;
        }
        case 's': /* SETITEM */
            x = pop(m);
            k = pop(m);
            if (!x || !k || !m->sp || m->stack[m->sp - 1]->kind != V_DICT)
                FAIL("%s: bad SETITEM at offset %ld", m->what, off(m));
            rc = dict_set(m->stack[m->sp - 1], k, x);
            break;
        case 'u': case 'e': { /* SETITEMS, APPENDS */
            if ((rc = pop_mark(m, &first))) return rc;
            int n = m->sp - first;
            if (first < 1 || (m->n_marks && first - 1 < m->marks[m->n_marks - 1]))
                FAIL("%s: SETITEMS/APPENDS without a target at offset %ld", m->what, off(m));
            val *target = m->stack[first - 1];
            if ((op == 'u' && (target->kind != V_DICT || n % 2)) ||
                (op == 'e' && target->kind != V_LIST))
                FAIL("%s: bad SETITEMS/APPENDS at offset %ld", m->what, off(m));
            for (int i = 0; i < n && !rc; i += op == 'u' ? 2 : 1)
                rc = op == 'u' ? dict_set(target, m->stack[first + i], m->stack[first + i + 1])
                               : vappend(target, m->stack[first + i]);
            if (rc) return rc;
            m->sp = first;
            break;
        }
        case 0x8f: rc = push(m, vnew(m->h, V_LIST)); break; /* EMPTY_SET: kept as a list */
        case 0x90: case 0x91: { /* ADDITEMS (into the set below the MARK), FROZENSET */
            if ((rc = pop_mark(m, &first))) return rc;
            if (op == 0x90 && (first < 1 || (m->n_marks && first - 1 < m->marks[m->n_marks - 1]) ||
                               m->stack[first - 1]->kind != V_LIST))
                FAIL("%s: bad ADDITEMS at offset %ld", m->what, off(m));
            val *target = op == 0x90 ? m->stack[first - 1] : vnew(m->h, V_LIST);
            if (!target) return nomem(m);
            for (int i = first; i < m->sp && !rc; i++) rc = vappend(target, m->stack[i]);
            if (rc) return rc;
            m->sp = first;
            if (op == 0x91) rc = push(m, target);
            break;
        }
        case 'a': /* APPEND */
            x = pop(m);
            if (!x || !m->sp || m->stack[m->sp - 1]->kind != V_LIST)
                FAIL("%s: bad APPEND at offset %ld", m->what, off(m));
            rc = vappend(m->stack[m->sp - 1], x);
            break;
        case 'X': case 'T': case 'B': /* BINUNICODE, BINSTRING, BINBYTES */
            if (need(m, 4)) return TINYSAM_E_FORMAT;
            {
                size_t len = rdle(m->p, 4);
                m->p += 4;
                rc = push_str(m, len, 1);
            }
            break;
        case 0x8c: case 'U': case 'C': /* SHORT_BINUNICODE, SHORT_BINSTRING, SHORT_BINBYTES */
            if (need(m, 1)) return TINYSAM_E_FORMAT;
            {
                size_t len = *m->p++;
                rc = push_str(m, len, 1);
            }
            break;
        case 0x8d: /* BINUNICODE8 */
            if (need(m, 8)) return TINYSAM_E_FORMAT;
            {
                uint64_t len = rdle(m->p, 8);
                m->p += 8;
                if (len > PICKLE_MAX_STRING) FAIL("%s: pickle string too long", m->what);
                rc = push_str(m, (size_t)len, 1);
            }
            break;
        case 'K': case 'M': case 'J': { /* BININT1, BININT2, BININT */
            int n = op == 'K' ? 1 : op == 'M' ? 2 : 4;
            if (need(m, (size_t)n)) return TINYSAM_E_FORMAT;
            if (!(v = vnew(m->h, V_INT))) return nomem(m);
            uint64_t u = rdle(m->p, n);
            v->i = op == 'J' ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
            m->p += n;
            rc = push(m, v);
            break;
        }
        case 0x8a: { /* LONG1 */
            if (need(m, 1)) return TINYSAM_E_FORMAT;
            int n = *m->p++;
            if (need(m, (size_t)n)) return TINYSAM_E_FORMAT;
            if (!(v = vnew(m->h, V_INT))) return nomem(m);
            /* values beyond 64 bits (the legacy magic number) keep their low 64 bits */
            uint64_t u = rdle(m->p, n > 8 ? 8 : n);
            if (n > 0 && n < 8 && (m->p[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);
            v->i = (int64_t)u;
            v->f = n; /* byte length, to tell the 10-byte magic apart */
            m->p += n;
            rc = push(m, v);
            break;
        }
        case 'G': { /* BINFLOAT, big-endian */
            if (need(m, 8)) return TINYSAM_E_FORMAT;
            if (!(v = vnew(m->h, V_FLOAT))) return nomem(m);
            uint64_t u = 0;
            for (int i = 0; i < 8; i++) u = u << 8 | m->p[i];
            memcpy(&v->f, &u, 8);
            m->p += 8;
            rc = push(m, v);
            break;
        }
        case 'R': rc = do_reduce(m); break;
        case 'Q': rc = do_persid(m); break;
        case 'b': /* BUILD */
            x = pop(m);
            if (!x || !m->sp) FAIL("%s: bad BUILD at offset %ld", m->what, off(m));
            v = m->stack[m->sp - 1];
            if (v->kind == V_DICT) break; /* a state_dict's _metadata: not needed */
            if (v->kind != V_OBJECT)
                FAIL("%s: pickle BUILD on something other than a module object at offset %ld",
                     m->what, off(m));
            if (x->kind != V_DICT || v->state)
                FAIL("%s: pickle BUILD of '%s' with %s at offset %ld", m->what, v->s,
                     v->state ? "a second state" : "a state that is not a dict", off(m));
            v->state = x;
            break;
        case 0x81: /* NEWOBJ: cls, args */
            x = pop(m);
            v = pop(m);
            if (!x || !v || x->kind != V_TUPLE || v->kind != V_GLOBAL || v->g != G_CLASS)
                FAIL("%s: pickle NEWOBJ of something other than a class at offset %ld", m->what,
                     off(m));
            rc = new_object(m, v, x);
            break;
        case 0x92: /* NEWOBJ_EX: cls, args, kwargs */
            k = pop(m);
            x = pop(m);
            v = pop(m);
            if (!k || !x || !v || k->kind != V_DICT || x->kind != V_TUPLE || v->kind != V_GLOBAL ||
                v->g != G_CLASS)
                FAIL("%s: pickle NEWOBJ_EX of something other than a class at offset %ld", m->what,
                     off(m));
            if (k->n) FAIL("%s: pickle creates '%s' with keyword arguments", m->what, v->s);
            rc = new_object(m, v, x);
            break;
        case '0': /* POP */
            if (!pop(m)) FAIL("%s: pickle stack underflow at offset %ld", m->what, off(m));
            break;
        default:
            FAIL("%s: unsupported pickle opcode 0x%02x at offset %ld", m->what, op, off(m) - 1);
        }
        if (rc) return rc;
    }
}

/* ------------------------------------------------------------------ tensors */

typedef int (*find_storage_fn)(void *ctx, const val *storage, const uint8_t **data,
                               uint64_t *bytes);

typedef struct {
    ts_tensor_map *map;
    const char *what;
    find_storage_fn find;
    void *ctx;
    int borrow;      /* storages lie in a mapping the map keeps: dense tensors use it in place */
    uint64_t budget; /* bytes the tensors may still allocate */
} loader;

/* Makes a loaded tensor of t: in place when allowed, otherwise a contiguous converted copy
 * (any offset and strides). */
static int materialise(loader *L, const char *name, const val *t, const uint8_t *sdata,
                       uint64_t sbytes) {
    const char *what = L->what;
    const tgeom *g = t->geo;
    int es = ts_dtype_size(t->dtype);
    if ((uint64_t)t->storage->i > sbytes / (uint64_t)es)
        FAIL("%s: storage of '%s' is shorter than its declared size", what, name);
    if (g->offset < 0 || g->ndim > TS_MAX_DIMS) FAIL("%s: bad tensor '%s'", what, name);
    int64_t numel = 1, maxidx = g->offset;
    for (int i = 0; i < g->ndim; i++) {
        if (g->shape[i] < 0 || g->stride[i] < 0)
            FAIL("%s: negative size/stride in '%s'", what, name);
        if (g->shape[i] && numel > ((int64_t)1 << 40) / g->shape[i])
            FAIL("%s: '%s' too large", what, name);
        numel *= g->shape[i];
    }
    int contiguous = 1;
    if (numel > 0) {
        int64_t want = 1;
        for (int i = (int)g->ndim - 1; i >= 0; i--) {
            if (g->stride[i] && g->shape[i] - 1 > (((int64_t)1 << 50) - maxidx) / g->stride[i])
                FAIL("%s: '%s' strides overflow", what, name);
            maxidx += (g->shape[i] - 1) * g->stride[i];
            if (g->shape[i] != 1 && g->stride[i] != want) contiguous = 0;
            want *= g->shape[i];
        }
        if (maxidx >= t->storage->i)
            FAIL("%s: tensor '%s' reaches past the end of its storage", what, name);
    }
    if (L->map->n >= PTH_MAX_TENSORS) FAIL("%s: more than %d tensors", what, PTH_MAX_TENSORS);
    ts_tensor *o = ts_map_add(L->map, name);
    if (!o) return TINYSAM_E_NOMEM;
    o->file_dtype = t->dtype;
    o->dtype = ts_dtype_loaded(t->dtype);
    o->ndim = (int)g->ndim;
    memcpy(o->shape, g->shape, sizeof o->shape);
    o->numel = numel;
    const uint8_t *src = sdata + g->offset * es;
    if (L->borrow && numel > 0 && contiguous && o->dtype == t->dtype &&
        (uintptr_t)src % (unsigned)es == 0) {
        o->data = (void *)src; /* read-only mapping; consumers only read weights */
        return 0;
    }
    int os = ts_dtype_size(o->dtype);
    uint64_t bytes = (uint64_t)numel * (uint64_t)os;
    if (bytes > L->budget)
        FAIL("%s: tensor '%s' would take the loaded size past %d times the file's size (shared "
             "or overlapping views?)", what, name, PTH_MAX_EXPANSION);
    L->budget -= bytes;
    o->data = malloc(bytes ? (size_t)bytes : 1);
    if (!o->data) return ts_error(TINYSAM_E_NOMEM, "out of memory for '%s'", name);
    if (contiguous) {
        ts_convert_elements(t->dtype, src, (size_t)numel, o->data);
        return 0;
    }
    /* walk the index space; the innermost dimension is converted as a run when it is dense */
    int64_t idx[TS_MAX_DIMS] = {0};
    int nd = (int)g->ndim;
    int64_t inner = nd ? g->shape[nd - 1] : 1, istride = nd ? g->stride[nd - 1] : 1;
    uint8_t *dst = o->data;
    for (int64_t done = 0; done < numel; done += inner) {
        int64_t base = g->offset;
        for (int i = 0; i < nd - 1; i++) base += idx[i] * g->stride[i];
        if (istride == 1 || inner == 1) {
            ts_convert_elements(t->dtype, sdata + base * es, (size_t)inner, dst);
        } else {
            for (int64_t j = 0; j < inner; j++)
                ts_convert_elements(t->dtype, sdata + (base + j * istride) * es, 1, dst + j * os);
        }
        dst += inner * os;
        for (int i = nd - 2; i >= 0; i--) {
            if (++idx[i] < g->shape[i]) break;
            idx[i] = 0;
        }
    }
    return 0;
}

/* Finds the state_dict: the top-level dict, or the dict under "model"/"state_dict"
 * (training checkpoints of other SAM-family models wrap it). */
static const val *find_state_dict(const val *root) {
    if (root->kind != V_DICT) return NULL;
    for (int i = 0; i + 1 < root->n; i += 2)
        if (root->items[i + 1]->kind == V_TENSOR) return root;
    static const char *wrappers[] = {"model", "state_dict"};
    for (int w = 0; w < 2; w++)
        for (int i = 0; i + 1 < root->n; i += 2)
            if (root->items[i]->kind == V_STR && !strcmp(root->items[i]->s, wrappers[w]) &&
                root->items[i + 1]->kind == V_DICT)
                return root->items[i + 1];
    return root;
}

static int cmp_tensor_name(const void *a, const void *b) {
    const ts_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* A name repeated in the state_dict would make the result depend on the order. */
static int check_unique(const ts_tensor_map *map, const char *what) {
    const ts_tensor **order = ts_calloc((size_t)map->n + 1, sizeof *order);
    if (!order) return TINYSAM_E_NOMEM;
    for (int i = 0; i < map->n; i++) order[i] = &map->t[i];
    qsort(order, (size_t)map->n, sizeof *order, cmp_tensor_name);
    int rc = 0;
    for (int i = 1; i < map->n && !rc; i++)
        if (!strcmp(order[i - 1]->name, order[i]->name))
            rc = ts_error(TINYSAM_E_FORMAT, "%s: tensor '%s' appears twice", what, order[i]->name);
    free(order);
    return rc;
}

static int add_entry(loader *L, const char *name, const val *t) {
    const uint8_t *data;
    uint64_t bytes;
    int rc = L->find(L->ctx, t->storage, &data, &bytes);
    return rc ? rc : materialise(L, name, t, data, bytes);
}

/* The module object of a whole-model pickle: the root, or the value under "model" (some
 * training checkpoints wrap it). */
static const val *find_module(const val *root) {
    if (root->kind == V_OBJECT) return root;
    if (root->kind != V_DICT) return NULL;
    for (int i = 0; i + 1 < root->n; i += 2)
        if (root->items[i]->kind == V_STR && !strcmp(root->items[i]->s, "model") &&
            root->items[i + 1]->kind == V_OBJECT)
            return root->items[i + 1];
    return NULL;
}

static int collect_module(loader *L, const val *obj) {
    ts_flat f = {0};
    int rc = ts_module_tree_flatten(obj, L->what, &f);
    if (rc) return rc;
    if (f.n == 0) rc = ts_error(TINYSAM_E_FORMAT, "%s: the module tree holds no tensors", L->what);
    for (int i = 0; i < f.n && !rc; i++) rc = add_entry(L, f.e[i].name, f.e[i].tensor);
    if (!rc) rc = check_unique(L->map, L->what);
    if (!rc) rc = ts_module_fold_ab(L->map, L->what);
    if (!rc) {
        snprintf(L->map->format, sizeof L->map->format, "pth-module");
        L->map->metadata_json = f.metadata_json;
        f.metadata_json = NULL;
    }
    ts_flat_free(&f);
    return rc;
}

static int collect(loader *L, const val *root) {
    const char *what = L->what;
    const val *mod = find_module(root);
    if (mod) return collect_module(L, mod);
    const val *sd = find_state_dict(root);
    if (!sd) FAIL("%s: the checkpoint does not hold a dict of tensors", what);
    for (int i = 0; i + 1 < sd->n; i += 2) {
        const val *k = sd->items[i], *t = sd->items[i + 1];
        if (k->kind != V_STR) FAIL("%s: state_dict key is not a string", what);
        if (t->kind != V_TENSOR) FAIL("%s: state_dict entry '%s' is not a tensor", what, k->s);
        int rc = add_entry(L, k->s, t);
        if (rc) return rc;
    }
    if (L->map->n == 0) FAIL("%s: the checkpoint holds no tensors", what);
    return check_unique(L->map, what);
}

static int vm_init(vm *m, heap *h, const uint8_t *p, const uint8_t *end, const char *what) {
    memset(m, 0, sizeof *m);
    m->p = m->start = p;
    m->end = end;
    m->h = h;
    m->what = what;
    m->stack = malloc(PICKLE_MAX_STACK * sizeof *m->stack);
    return m->stack ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
}

static void vm_free(vm *m) {
    free(m->stack);
    free(m->memo);
}

/* ---- ZIP container */

typedef struct {
    const ts_zip *z;
    char prefix[512];
    const char *what;
} zip_ctx;

static int zip_find_storage(void *ctx, const val *s, const uint8_t **data, uint64_t *bytes) {
    zip_ctx *c = ctx;
    char name[1100];
    snprintf(name, sizeof name, "%sdata/%s", c->prefix, s->s);
    const ts_zip_entry *e = ts_zip_find(c->z, name);
    if (!e) FAIL("%s: storage '%s' is missing from the archive", c->what, s->s);
    *data = e->data;
    *bytes = e->size;
    return 0;
}

static int load_zip(loader *L, const uint8_t *buf, size_t size) {
    const char *what = L->what;
    ts_zip z;
    int rc = ts_zip_open(buf, size, &z);
    if (!rc) rc = ts_zip_verify(&z);
    if (rc) return ts_zip_close(&z), ts_error_prefix(rc, "%s", what);
    zip_ctx c = {.z = &z, .what = what};
    const ts_zip_entry *pkl = NULL;
    for (int i = 0; i < z.n; i++) {
        size_t l = strlen(z.e[i].name);
        if (l >= 9 && !strcmp(z.e[i].name + l - 9, "/data.pkl") && l - 8 < sizeof c.prefix) {
            pkl = &z.e[i];
            memcpy(c.prefix, z.e[i].name, l - 8);
            c.prefix[l - 8] = 0;
            break;
        }
    }
    if (!pkl) {
        ts_zip_close(&z);
        FAIL("%s: ZIP archive without data.pkl (not a PyTorch checkpoint)", what);
    }
    char bo[600];
    snprintf(bo, sizeof bo, "%sbyteorder", c.prefix);
    const ts_zip_entry *e = ts_zip_find(&z, bo);
    if (e && !(e->size >= 6 && !memcmp(e->data, "little", 6))) {
        ts_zip_close(&z);
        FAIL("%s: big-endian checkpoints are not supported (byteorder is not \"little\")", what);
    }
    heap h = {0};
    vm m;
    val *root = NULL;
    if (!(rc = vm_init(&m, &h, pkl->data, pkl->data + pkl->size, what))) {
        rc = run_pickle(&m, &root);
        L->find = zip_find_storage;
        L->ctx = &c;
        if (!rc) rc = collect(L, root);
    }
    vm_free(&m);
    heap_free(&h);
    ts_zip_close(&z);
    return rc;
}

/* ---- legacy container */

typedef struct {
    const char *name;
    int es;              /* element size from the storage class that uses it */
    const uint8_t *data; /* raw bytes in the file */
    uint64_t bytes;
} lkey;

typedef struct {
    lkey *keys; /* sorted by name */
    int n;
    const char *what;
} legacy_ctx;

static int cmp_lkey(const void *a, const void *b) {
    return strcmp(((const lkey *)a)->name, ((const lkey *)b)->name);
}

static lkey *legacy_key(const legacy_ctx *c, const char *name) {
    lkey k = {.name = name};
    return bsearch(&k, c->keys, (size_t)c->n, sizeof k, cmp_lkey);
}

static int legacy_find_storage(void *ctx, const val *s, const uint8_t **data, uint64_t *bytes) {
    legacy_ctx *c = ctx;
    const lkey *k = legacy_key(c, s->s);
    if (!k) FAIL("%s: storage '%s' is not in the file", c->what, s->s);
    *data = k->data;
    *bytes = k->bytes;
    return 0;
}

/* The five pickles, then the storages in key-list order: int64 count, count * element-size
 * bytes. Element sizes come from the storage classes recorded in the data pickle. */
static int load_legacy(loader *L, const uint8_t *buf, size_t size) {
    const char *what = L->what;
    heap h = {0};
    vm m;
    val *magic, *proto, *sysinfo, *root, *keys;
    legacy_ctx c = {.what = what};
    int rc = vm_init(&m, &h, buf, buf + size, what);
    if (rc) return rc;
    if ((rc = run_pickle(&m, &magic))) goto done;
    if (magic->kind != V_INT || magic->f != 10 || (uint64_t)magic->i != 0x0a86a20f9469cfc6cULL) {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: not a PyTorch checkpoint (bad magic number)", what);
        goto done;
    }
    if ((rc = run_pickle(&m, &proto))) goto done;
    if (proto->kind != V_INT || proto->i != 1001) {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: unsupported legacy protocol version", what);
        goto done;
    }
    if ((rc = run_pickle(&m, &sysinfo))) goto done;
    if (sysinfo->kind == V_DICT)
        for (int i = 0; i + 1 < sysinfo->n; i += 2)
            if (sysinfo->items[i]->kind == V_STR &&
                !strcmp(sysinfo->items[i]->s, "little_endian") &&
                sysinfo->items[i + 1]->kind == V_BOOL && !sysinfo->items[i + 1]->i) {
                rc = ts_error(TINYSAM_E_FORMAT, "%s: big-endian checkpoints are not supported",
                              what);
                goto done;
            }
    if ((rc = run_pickle(&m, &root))) goto done;
    if ((rc = run_pickle(&m, &keys))) goto done;
    if (keys->kind != V_LIST) {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: bad storage key list", what);
        goto done;
    }
    c.n = keys->n;
    if (!(c.keys = ts_calloc((size_t)c.n + 1, sizeof *c.keys))) {
        rc = TINYSAM_E_NOMEM;
        goto done;
    }
    for (int i = 0; i < c.n; i++) {
        if (keys->items[i]->kind != V_STR) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: bad storage key list", what);
            goto done;
        }
        c.keys[i].name = keys->items[i]->s;
    }
    qsort(c.keys, (size_t)c.n, sizeof *c.keys, cmp_lkey);
    for (int i = 1; i < c.n; i++)
        if (!strcmp(c.keys[i - 1].name, c.keys[i].name)) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: storage key '%s' listed twice", what,
                          c.keys[i].name);
            goto done;
        }
    for (size_t j = 0; j < h.n; j++) {
        const val *s = heap_at(&h, j);
        lkey *k = s->kind == V_STORAGE ? legacy_key(&c, s->s) : NULL;
        if (!k) continue; /* unknown keys fail when a tensor asks for them */
        int es = ts_dtype_size(s->dtype);
        if (k->es && k->es != es) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: storage '%s' used with two element sizes", what,
                          k->name);
            goto done;
        }
        k->es = es;
    }
    const uint8_t *p = m.p, *end = buf + size;
    for (int i = 0; i < keys->n; i++) {
        lkey *k = legacy_key(&c, keys->items[i]->s);
        if (!k->es) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: storage '%s' is never used", what, k->name);
            goto done;
        }
        if (end - p < 8) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: truncated (storage %d of %d missing)", what,
                          i + 1, keys->n);
            goto done;
        }
        uint64_t count = rdle(p, 8);
        p += 8;
        if (count > (uint64_t)(end - p) / (uint64_t)k->es) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: truncated (storage '%s' needs %llu bytes)", what,
                          k->name, (unsigned long long)count * (uint64_t)k->es);
            goto done;
        }
        k->data = p;
        k->bytes = count * (uint64_t)k->es;
        p += k->bytes;
    }
    L->find = legacy_find_storage;
    L->ctx = &c;
    rc = collect(L, root);
done:
    free(c.keys);
    vm_free(&m);
    heap_free(&h);
    return rc;
}

/* ------------------------------------------------------------------ entry points */

static int load_buffer(const uint8_t *data, size_t size, const char *what, int borrow,
                       ts_tensor_map **out) {
    *out = NULL;
    ts_tensor_map *map = ts_calloc(1, sizeof *map);
    if (!map) return TINYSAM_E_NOMEM;
    loader L = {.map = map, .what = what, .borrow = borrow,
                .budget = (uint64_t)size * PTH_MAX_EXPANSION + PTH_EXPANSION_SLACK};
    if (borrow) { /* so that ts_map_free never frees a pointer into the buffer */
        map->map_base = (void *)data;
        map->map_size = size;
        map->borrowed = 1;
    }
    int rc;
    if (size >= 4 && !memcmp(data, "PK\x03\x04", 4)) {
        snprintf(map->format, sizeof map->format, "pth-zip");
        rc = load_zip(&L, data, size);
        snprintf(map->integrity, sizeof map->integrity, "crc32"); /* every record checked */
    } else if (size >= 2 && data[0] == 0x80) {
        snprintf(map->format, sizeof map->format, "pth-legacy");
        rc = load_legacy(&L, data, size);
    } else {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: not a PyTorch checkpoint", what);
    }
    if (rc) {
        ts_map_free(map);
        return rc;
    }
    *out = map;
    return 0;
}

int ts_pth_load_memory(const uint8_t *data, size_t size, ts_tensor_map **out) {
    /* the caller's buffer may not outlive the map: copy every tensor */
    return load_buffer(data, size, "checkpoint", 0, out);
}

int ts_pth_load(const char *path, ts_tensor_map **out) {
    uint8_t *base;
    size_t size;
    *out = NULL;
    int rc = ts_file_map(path, &base, &size);
    if (rc) return rc;
    ts_tensor_map *map = NULL;
    rc = load_buffer(base, size, path, 1, &map);
    if (rc) {
        ts_file_unmap(base, size);
        return rc;
    }
    /* keep the mapping only when some tensor points into it (float16 files are all copies) */
    int in_place = 0;
    for (int i = 0; i < map->n && !in_place; i++)
        in_place = (const uint8_t *)map->t[i].data >= base &&
                   (const uint8_t *)map->t[i].data < base + size;
    if (in_place) {
        map->borrowed = 0; /* the map owns the mapping now */
    } else {
        map->map_base = NULL;
        map->map_size = 0;
        map->borrowed = 0;
        ts_file_unmap(base, size);
    }
    *out = map;
    return 0;
}
