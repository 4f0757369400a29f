/* The ledger's binary COPY rows in C: what ledger/entry.py's write_binary_rows writes, faster.
 *
 * Why: append's Python loop costs 4-6 us an entry (one field at a time through the
 * interpreter), psycopg's COPY of the finished rows about 3; this does the same work in
 * about 2, some 0.8 of it the two SHA-256 (openssl speed: 0.4 us for 350 bytes here).
 * It knows kinds of field, not fields: ledger/entry.py gives it the schema as a plan
 * (configure), so the fields are still named once, in schemas/disclosure.avsc.
 *
 * One rule keeps it exact: it writes only what it is sure of. A value of any other
 * class or range than the usual (a str or int subclass, a bool, a string that is not
 * valid UTF-8, a draft check_draft refuses, a seq past int64, ...) makes rows() return
 * None, and the caller does the chunk in Python, which writes it or raises as it always
 * has. An exception that is not an Exception (KeyboardInterrupt, SystemExit) is never
 * swallowed: it propagates. Each draft's values are read once, from a tuple of the
 * drafts rows() holds, so Python code it calls (check_draft, the stamp and array
 * functions, a property) cannot change what it checked or free what it reads.
 * tests/unit/test_binary_rows.py compares the two byte for byte.
 *
 * rows(drafts, seq, prev_hash) -> (data, last_entry_hash) | None
 *     data: the drafts' rows, numbered seq + 1, ..., chained from prev_hash, as binary
 *     COPY rows (no header, no trailer).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <stdint.h>
#include <string.h>

enum kind {
    K_SEQ = 1,     /* the seq argument: Avro long, int8 */
    K_PREV = 2,    /* the prev_hash argument: Avro fixed 32, bytea */
    K_STRING = 3,  /* Avro string, text */
    K_NSTRING = 4, /* Avro [null, string], text or NULL */
    K_LONG8 = 5,   /* Avro int or long, int8 */
    K_INT4 = 6,    /* Avro int, int4 */
    K_ENUM = 7,    /* Avro enum (table: symbol -> leaf bytes), text */
    K_ARRAY = 8,   /* Avro array of strings, text JSON: (cache, store) -> (leaf bytes, row bytes) */
    K_STAMP = 9,   /* timestamp-millis: stamp(datetime) -> (leaf bytes, row field bytes) */
};

/* Where a field's value comes from: the draft's attribute, or one rows() read already for its checks. */
enum source { FROM_ATTR = 0, FROM_ID, FROM_OUTCOME, FROM_DIGEST };

typedef struct {
    int kind;
    int source;
    PyObject *attr;   /* the draft's attribute; NULL for the arguments */
    PyObject *table;  /* K_ENUM: dict; K_ARRAY: dict cache */
    PyObject *store;  /* K_ARRAY: store(values) -> (leaf bytes, row bytes) */
} Field;

static Field *fields;
static Py_ssize_t nfields;
static int16_t ncolumns;
static PyObject *check_draft, *outcomes, *not_covered, *stamp_fn;
static PyObject *attr_id, *attr_outcome, *attr_digest, *attr_stamp;
static EVP_MD_CTX *md_ctx;
static const EVP_MD *md_sha256; /* fetched once: EVP_sha256() in each init costs a provider look-up under a lock */

/* A growable byte buffer. */
typedef struct {
    char *p;
    size_t n, cap;
} Buf;

static int grow(Buf *b, size_t more) {
    if (b->n + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more) cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int put(Buf *b, const void *data, size_t len) {
    if (grow(b, len)) return -1;
    memcpy(b->p + b->n, data, len);
    b->n += len;
    return 0;
}

static inline int put_be32(Buf *b, int32_t v) {
    uint32_t u = (uint32_t)v;
    unsigned char c[4] = {u >> 24, u >> 16, u >> 8, u};
    return put(b, c, 4);
}

static inline int put_be64(Buf *b, int64_t v) {
    uint64_t u = (uint64_t)v;
    unsigned char c[8];
    for (int i = 7; i >= 0; i--, u >>= 8) c[i] = (unsigned char)u;
    return put(b, c, 8);
}

static inline int put_zigzag(Buf *b, int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    unsigned char c[10];
    int n = 0;
    while (z >= 0x80) {
        c[n++] = (unsigned char)(z | 0x80);
        z >>= 7;
    }
    c[n++] = (unsigned char)z;
    return put(b, c, n);
}

/* After a Python call or conversion failed: 0 (declined: the Python path decides) for an
 * Exception, which is cleared; -1 for anything else (KeyboardInterrupt, ...), left set. */
static int soft(void) {
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* Put a str's UTF-8 bytes: leaf (zig-zag length, bytes) and row (int32 length, bytes).
 * 1 done, 0 not an exact str or not UTF-8 (the Python path decides), -1 an error. */
static int put_string(Buf *leaf, Buf *row, PyObject *v) {
    if (!PyUnicode_CheckExact(v)) return 0;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (!s) return soft();
    if (n > INT32_MAX) return 0;
    if (put_zigzag(leaf, n) || put(leaf, s, n) || put_be32(row, (int32_t)n) || put(row, s, n)) return -1;
    return 1;
}

/* An exact int in int64 (not a bool, not a subclass): 1 and *out, or 0. Cannot fail. */
static int exact_int64(PyObject *v, int64_t *out) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) return 0;
    if (x == -1 && PyErr_Occurred()) { /* not for an exact int; kept for safety */
        PyErr_Clear();
        return 0;
    }
    *out = x;
    return 1;
}

/* A pair (bytes, bytes) put to leaf and row: 1, 0 (not such a pair), -1. */
static int put_pair(Buf *leaf, Buf *row, PyObject *pair) {
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) return 0;
    PyObject *a = PyTuple_GET_ITEM(pair, 0), *b = PyTuple_GET_ITEM(pair, 1);
    if (!PyBytes_CheckExact(a) || !PyBytes_CheckExact(b)) return 0;
    if (put(leaf, PyBytes_AS_STRING(a), PyBytes_GET_SIZE(a)) || put(row, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)))
        return -1;
    return 1;
}

/* The regex [0-9a-f]{64}, fullmatch, on an exact str. */
static int is_digest(PyObject *v) {
    if (PyUnicode_GET_LENGTH(v) != 64 || PyUnicode_KIND(v) != PyUnicode_1BYTE_KIND) return 0;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(v);
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int sha256(const unsigned char *data, size_t n, unsigned char *out) {
    unsigned int len;
    if (EVP_DigestInit_ex(md_ctx, md_sha256, NULL) != 1 || EVP_DigestUpdate(md_ctx, data, n) != 1 ||
        EVP_DigestFinal_ex(md_ctx, out, &len) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
        return -1;
    }
    return 0;
}

/* The values rows() reads of each draft before its fields: for the checks, and written as read. */
typedef struct {
    PyObject *id, *outcome, *digest, *at;
} Checked;

/* check_draft's rules, as write_binary_rows applies them: 1 passed, 0 the Python path decides, -1. */
static int checked(PyObject *draft, const Checked *c, PyObject **last_digest) {
    if (!PyUnicode_CheckExact(c->id) || !PyUnicode_CheckExact(c->outcome) || !PyUnicode_CheckExact(c->digest))
        return 0; /* a subclass may answer len, == or `in` otherwise than a str: Python asks it */
    int known = PySet_Contains(outcomes, c->outcome);
    if (known < 0) return soft();
    Py_ssize_t n = PyUnicode_GET_LENGTH(c->id);
    int uncovered = PyUnicode_Compare(c->outcome, not_covered) == 0;
    if (!known || n == 0 || n > 64 || uncovered) {
        PyObject *r = PyObject_CallOneArg(check_draft, draft); /* raises, or passes a valid NOT_COVERED */
        if (!r) return soft();
        Py_DECREF(r);
    }
    if (*last_digest == NULL || PyUnicode_Compare(c->digest, *last_digest) != 0) {
        if (PyUnicode_GET_LENGTH(c->digest) != 0 && !is_digest(c->digest)) return 0; /* check_draft refuses it */
        Py_XSETREF(*last_digest, Py_NewRef(c->digest));
    }
    return 1;
}

/* One draft's row to row, its leaf to leaf (after the leaf's 0x00 prefix byte). 1, 0 or -1. */
static int put_draft(Buf *leaf, Buf *row, PyObject *draft, const Checked *c, int64_t seq, const unsigned char *prev,
                     PyObject *stamp) {
    leaf->n = 1;
    int16_t cols = ncolumns;
    unsigned char head[2] = {(unsigned char)((uint16_t)cols >> 8), (unsigned char)cols};
    if (put(row, head, 2)) return -1;
    for (Py_ssize_t i = 0; i < nfields; i++) {
        Field *f = &fields[i];
        int r = 1;
        if (f->kind == K_SEQ) {
            if (put_zigzag(leaf, seq) || put_be32(row, 8) || put_be64(row, seq)) return -1;
            continue;
        }
        if (f->kind == K_PREV) {
            if (put(leaf, prev, 32) || put_be32(row, 32) || put(row, prev, 32)) return -1;
            continue;
        }
        if (f->kind == K_STAMP) {
            r = put_pair(leaf, row, stamp);
            if (r != 1) return r;
            continue;
        }
        PyObject *v;
        switch (f->source) {
            case FROM_ID:
                v = Py_NewRef(c->id);
                break;
            case FROM_OUTCOME:
                v = Py_NewRef(c->outcome);
                break;
            case FROM_DIGEST:
                v = Py_NewRef(c->digest);
                break;
            default:
                v = PyObject_GetAttr(draft, f->attr);
                if (!v) return soft();
        }
        int64_t x;
        switch (f->kind) {
            case K_STRING:
                r = put_string(leaf, row, v);
                break;
            case K_NSTRING:
                if (v == Py_None) {
                    unsigned char zero = 0;
                    r = (put(leaf, &zero, 1) || put_be32(row, -1)) ? -1 : 1;
                } else {
                    unsigned char two = 2;
                    r = put(leaf, &two, 1) ? -1 : put_string(leaf, row, v);
                }
                break;
            case K_LONG8:
                r = exact_int64(v, &x) ? ((put_zigzag(leaf, x) || put_be32(row, 8) || put_be64(row, x)) ? -1 : 1) : 0;
                break;
            case K_INT4:
                r = exact_int64(v, &x) && x >= INT32_MIN && x <= INT32_MAX
                        ? ((put_zigzag(leaf, x) || put_be32(row, 4) || put_be32(row, (int32_t)x)) ? -1 : 1)
                        : 0;
                break;
            case K_ENUM: {
                if (!PyUnicode_CheckExact(v)) {
                    r = 0;
                    break;
                }
                PyObject *code = PyDict_GetItemWithError(f->table, v); /* borrowed: the table is ours */
                Py_ssize_t n;
                const char *s = code ? PyUnicode_AsUTF8AndSize(v, &n) : NULL;
                if (!code || !s) {
                    r = PyErr_Occurred() ? soft() : 0;
                    break;
                }
                if (!PyBytes_CheckExact(code)) {
                    r = 0;
                    break;
                }
                r = (put(leaf, PyBytes_AS_STRING(code), PyBytes_GET_SIZE(code)) || put_be32(row, (int32_t)n) ||
                     put(row, s, n))
                        ? -1
                        : 1;
                break;
            }
            case K_ARRAY: {
                /* As write_binary_rows: the cache for a tuple, else the store (a list, ...). */
                PyObject *pair = PyTuple_CheckExact(v) ? PyDict_GetItemWithError(f->table, v) : NULL;
                if (pair) {
                    Py_INCREF(pair);
                } else if (!PyErr_Occurred()) {
                    pair = PyObject_CallOneArg(f->store, v);
                }
                r = pair ? put_pair(leaf, row, pair) : soft(); /* unhashable, or the store refused */
                Py_XDECREF(pair);
                break;
            }
            default:
                r = 0;
        }
        Py_DECREF(v);
        if (r != 1) return r;
    }
    return 1;
}

/* Whether the timestamp ``at`` needs converting after ``cached`` (write_binary_rows' test:
 * not the same object, and unequal or of another fold). 1 yes, 0 no, -1 an error. */
static int new_stamp(PyObject *at, PyObject *cached) {
    if (cached == NULL) return 1;
    if (at == cached) return 0;
    int ne = PyObject_RichCompareBool(at, cached, Py_NE);
    if (ne < 0) return -1;
    return ne || PyDateTime_DATE_GET_FOLD(at) != PyDateTime_DATE_GET_FOLD(cached);
}

static PyObject *rows(PyObject *self, PyObject *args) {
    PyObject *drafts, *seq_obj, *prev_obj;
    if (!fields) {
        PyErr_SetString(PyExc_RuntimeError, "ledger._binary_rows: configure() first");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOO", &drafts, &seq_obj, &prev_obj)) return NULL;
    int64_t seq;
    /* Only a list or tuple: an iterator would be used up by a try that declines. */
    if ((!PyList_CheckExact(drafts) && !PyTuple_CheckExact(drafts)) || !PyBytes_CheckExact(prev_obj) ||
        PyBytes_GET_SIZE(prev_obj) != 32 || !exact_int64(seq_obj, &seq) || seq < 0)
        Py_RETURN_NONE;
    PyObject *held = PySequence_Tuple(drafts); /* ours: Python code called below cannot change or free it */
    if (!held) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(held);
    if (seq > INT64_MAX - n) { /* the last seq would not fit int64: Python refuses it */
        Py_DECREF(held);
        Py_RETURN_NONE;
    }
    unsigned char prev[32], entry_hash[32], leaf_hash[32];
    memcpy(prev, PyBytes_AS_STRING(prev_obj), 32);
    Buf leaf = {0}, row = {0};
    PyObject *result = NULL, *stamp = NULL, *cached_at = NULL, *last_digest = NULL;
    int status = 1;
    unsigned char zero = 0;
    if (put(&leaf, &zero, 1)) status = -1; /* the RFC 9162 leaf prefix, before the leaf's bytes */
    for (Py_ssize_t i = 0; i < n && status == 1; i++) {
        PyObject *draft = PyTuple_GET_ITEM(held, i);
        Checked c = {NULL, NULL, NULL, NULL};
        if (!(c.id = PyObject_GetAttr(draft, attr_id)) || !(c.outcome = PyObject_GetAttr(draft, attr_outcome)) ||
            !(c.digest = PyObject_GetAttr(draft, attr_digest)) || !(c.at = PyObject_GetAttr(draft, attr_stamp))) {
            status = soft();
        } else if (!PyDateTime_CheckExact(c.at)) {
            status = 0; /* a subclass may compare otherwise: Python decides */
        } else {
            status = checked(draft, &c, &last_digest);
        }
        if (status == 1) {
            int fresh = new_stamp(c.at, cached_at);
            if (fresh < 0) {
                status = soft();
            } else if (fresh) {
                Py_XSETREF(stamp, PyObject_CallOneArg(stamp_fn, c.at)); /* refuses a naive one */
                if (!stamp)
                    status = soft();
                else
                    Py_XSETREF(cached_at, Py_NewRef(c.at));
            }
        }
        if (status == 1) {
            seq += 1;
            status = put_draft(&leaf, &row, draft, &c, seq, prev, stamp);
        }
        if (status == 1) {
            if (sha256((unsigned char *)leaf.p + 1, leaf.n - 1, entry_hash) ||
                sha256((unsigned char *)leaf.p, leaf.n, leaf_hash) || put_be32(&row, 32) ||
                put(&row, entry_hash, 32) || put_be32(&row, 32) || put(&row, leaf_hash, 32))
                status = -1;
            memcpy(prev, entry_hash, 32);
        }
        Py_XDECREF(c.id);
        Py_XDECREF(c.outcome);
        Py_XDECREF(c.digest);
        Py_XDECREF(c.at);
    }
    if (status == 1) {
        result = Py_BuildValue("(y#y#)", row.p ? row.p : "", (Py_ssize_t)row.n, (const char *)prev, (Py_ssize_t)32);
    } else if (status == 0) {
        result = Py_NewRef(Py_None);
    }
    Py_XDECREF(stamp);
    Py_XDECREF(cached_at);
    Py_XDECREF(last_digest);
    Py_DECREF(held);
    PyMem_Free(leaf.p);
    PyMem_Free(row.p);
    return result;
}

static void unconfigure(void) {
    for (Py_ssize_t i = 0; i < nfields; i++) {
        Py_XDECREF(fields[i].attr);
        Py_XDECREF(fields[i].table);
        Py_XDECREF(fields[i].store);
    }
    PyMem_Free(fields);
    fields = NULL;
    nfields = 0;
    Py_CLEAR(check_draft);
    Py_CLEAR(outcomes);
    Py_CLEAR(not_covered);
    Py_CLEAR(stamp_fn);
    Py_CLEAR(attr_id);
    Py_CLEAR(attr_outcome);
    Py_CLEAR(attr_digest);
    Py_CLEAR(attr_stamp);
}

static int source_of(PyObject *attr, PyObject *const *checked_attrs) {
    if (attr == NULL) return FROM_ATTR;
    for (int k = 0; k < 3; k++)
        if (PyUnicode_Compare(attr, checked_attrs[k]) == 0) return FROM_ID + k;
    return FROM_ATTR;
}

/* configure(plan, check_draft, outcomes, not_covered, stamp, checked_attrs): again replaces the plan.
 *   plan: ((kind, attr | None, table | None, store | None), ...) in the leaf's field order
 *   checked_attrs: (disclosure_id, outcome, event_digest, the timestamp's attribute), all str */
static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *plan, *check, *outs, *nc, *stamp, *attrs;
    if (!PyArg_ParseTuple(args, "O!OO!UOO!", &PyTuple_Type, &plan, &check, &PyFrozenSet_Type, &outs, &nc, &stamp,
                          &PyTuple_Type, &attrs))
        return NULL;
    if (PyTuple_GET_SIZE(attrs) != 4) {
        PyErr_SetString(PyExc_ValueError, "checked_attrs: four attribute names");
        return NULL;
    }
    for (int k = 0; k < 4; k++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(attrs, k))) {
            PyErr_SetString(PyExc_TypeError, "checked_attrs: four str");
            return NULL;
        }
    Py_ssize_t n = PyTuple_GET_SIZE(plan);
    Field *fs = PyMem_Calloc(n ? n : 1, sizeof(Field));
    if (!fs) return PyErr_NoMemory();
    PyObject *const checked_attrs[3] = {PyTuple_GET_ITEM(attrs, 0), PyTuple_GET_ITEM(attrs, 1),
                                        PyTuple_GET_ITEM(attrs, 2)};
    for (Py_ssize_t i = 0; i < n; i++) { /* check all before keeping any reference */
        PyObject *t = PyTuple_GET_ITEM(plan, i);
        int kind;
        PyObject *attr, *table, *store;
        if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "iOOO", &kind, &attr, &table, &store)) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "plan field %zd: not a tuple", i);
            PyMem_Free(fs);
            return NULL;
        }
        int needs_attr = kind != K_SEQ && kind != K_PREV && kind != K_STAMP;
        if (kind < K_SEQ || kind > K_STAMP || (needs_attr && !PyUnicode_CheckExact(attr)) ||
            ((kind == K_ENUM || kind == K_ARRAY) && !PyDict_CheckExact(table)) ||
            (kind == K_ARRAY && !PyCallable_Check(store))) {
            PyErr_Format(PyExc_ValueError, "plan field %zd: kind %d, or its attribute, table or store, not understood", i,
                         kind);
            PyMem_Free(fs);
            return NULL;
        }
        fs[i].kind = kind;
        fs[i].attr = needs_attr ? attr : NULL;
        fs[i].table = table == Py_None ? NULL : table;
        fs[i].store = store == Py_None ? NULL : store;
        fs[i].source = needs_attr ? source_of(attr, checked_attrs) : FROM_ATTR;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XINCREF(fs[i].attr);
        Py_XINCREF(fs[i].table);
        Py_XINCREF(fs[i].store);
    }
    unconfigure();
    fields = fs;
    nfields = n;
    ncolumns = (int16_t)(n + 2); /* the leaf's fields, then entry_hash and leaf_hash */
    stamp_fn = Py_NewRef(stamp);
    check_draft = Py_NewRef(check);
    outcomes = Py_NewRef(outs);
    not_covered = Py_NewRef(nc);
    attr_id = Py_NewRef(checked_attrs[0]);
    attr_outcome = Py_NewRef(checked_attrs[1]);
    attr_digest = Py_NewRef(checked_attrs[2]);
    attr_stamp = Py_NewRef(PyTuple_GET_ITEM(attrs, 3));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS, "rows(drafts, seq, prev_hash) -> (data, last_entry_hash) | None"},
    {"configure", configure, METH_VARARGS, "configure(plan, check_draft, outcomes, not_covered, stamp, attrs)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ledger._binary_rows",
                                    "The ledger's binary COPY rows in C (ledger/entry.py binary_rows).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__binary_rows(void) {
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    md_ctx = EVP_MD_CTX_new();
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    md_sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
#else
    md_sha256 = EVP_sha256();
#endif
    if (!md_ctx || !md_sha256) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256 here");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    /* The kinds by name, so ledger/entry.py's plan never writes their numbers. */
    static const struct {
        const char *name;
        int kind;
    } kinds[] = {{"SEQ", K_SEQ},     {"PREV", K_PREV},   {"STRING", K_STRING}, {"NSTRING", K_NSTRING}, {"LONG8", K_LONG8},
                 {"INT4", K_INT4},   {"ENUM", K_ENUM},   {"ARRAY", K_ARRAY},   {"STAMP", K_STAMP}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (PyModule_AddIntConstant(m, kinds[i].name, kinds[i].kind) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
