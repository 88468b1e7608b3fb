/* The sparse embedding kernels of the vectorized engine (reprokit.training.vectorized).
 *
 * Every training step of the engine sums the per-occurrence gradients of a batch's embedding rows
 * into the unique rows (`coalesce`), then updates only those rows of the table and of the
 * optimizer state (`sgd_rows`, `adagrad_sum_rows` + `adagrad_apply_rows`). In torch ops each of
 * these takes half a dozen small kernels (gathers, elementwise passes, scatters), each re-reading
 * scattered memory; here each is one pass over the rows.
 *
 * The results are bitwise those of the torch-ops paths (EmbeddingGradAccumulator._torch,
 * StackedOptimizer._sparse_torch), which tests/test_vectorized_fused.py checks: the unique rows in
 * increasing order, each row's occurrences summed in occurrence order starting from +0.0f, as
 * index_add_ into a zeroed buffer does, and the row updates in torch's operation order with the
 * learning rate and epsilon rounded to float32 as torch rounds a Python scalar (built without
 * floating-point contraction or fast-math, see setup.py).
 *
 * Adagrad's square root is not in here: torch's float32 sqrt on CPU is MKL's, within 1 ulp rather
 * than correctly rounded, so the caller takes it with torch between the two Adagrad passes, which
 * keeps the engine's bits those of torch.optim's Adagrad.
 * The work per step is small (a batch's rows), so the kernels run on the calling thread with the
 * GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define CHECK_NARGS(name, want)                                                                 \
    if (nargs != (want)) {                                                                      \
        PyErr_Format(PyExc_TypeError, name "() takes %d arguments (%zd given)", (want), nargs); \
        return NULL;                                                                            \
    }

static int parse_ptrs(PyObject *const *args, int count, uintptr_t *out)
{
    for (int i = 0; i < count; i++) {
        out[i] = (uintptr_t)PyLong_AsUnsignedLongLong(args[i]);
        if (out[i] == (uintptr_t)-1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static int parse_sizes(PyObject *const *args, int count, Py_ssize_t *out)
{
    for (int i = 0; i < count; i++) {
        out[i] = PyLong_AsSsize_t(args[i]);
        if (out[i] == -1 && PyErr_Occurred())
            return -1;
        if (out[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "sizes must not be negative");
            return -1;
        }
    }
    return 0;
}

/* Returns the number of unique rows, or -1 when an index is outside [0, n_rows). */
static Py_ssize_t coalesce_rows(const int64_t *index, Py_ssize_t n_occ, const float *grad,
                                Py_ssize_t dim, Py_ssize_t n_rows, uint8_t *touched,
                                int64_t *slot, int64_t *rows, float *values)
{
    Py_ssize_t unique = 0;
    for (Py_ssize_t i = 0; i < n_occ; i++) {
        int64_t r = index[i];
        if (r < 0 || r >= n_rows) {
            for (Py_ssize_t k = 0; k < i; k++)
                touched[index[k]] = 0;
            return -1;
        }
        if (!touched[r]) {
            touched[r] = 1;
            rows[unique++] = r;
        }
    }
    /* increasing row order: a scan of the touched mask while the table has at most 64 rows per
     * occurrence (a few cache lines per step), else a sort of the short list of unique rows */
    if ((n_rows >> 6) <= n_occ) {
        Py_ssize_t u = 0;
        for (Py_ssize_t r = 0; r < n_rows; r++)
            if (touched[r])
                rows[u++] = r;
    } else {
        /* shell sort of the unique rows (no allocation; U is at most a batch's occurrences) */
        static const Py_ssize_t gaps[] = {1750, 701, 301, 132, 57, 23, 10, 4, 1};
        for (size_t g = 0; g < sizeof gaps / sizeof gaps[0]; g++) {
            Py_ssize_t gap = gaps[g];
            for (Py_ssize_t i = gap; i < unique; i++) {
                int64_t v = rows[i];
                Py_ssize_t j = i;
                for (; j >= gap && rows[j - gap] > v; j -= gap)
                    rows[j] = rows[j - gap];
                rows[j] = v;
            }
        }
    }
    for (Py_ssize_t u = 0; u < unique; u++) {
        slot[rows[u]] = u;
        touched[rows[u]] = 0;
    }
    memset(values, 0, (size_t)unique * (size_t)dim * sizeof(float));
    for (Py_ssize_t i = 0; i < n_occ; i++) {
        float *dst = values + slot[index[i]] * dim;
        const float *src = grad + i * dim;
        for (Py_ssize_t d = 0; d < dim; d++)
            dst[d] = dst[d] + src[d];
    }
    return unique;
}

/* coalesce(index_ptr, n_occ, grad_ptr, dim, n_rows, touched_ptr, slot_ptr, rows_ptr, values_ptr)
 * index int64 [n_occ], grad float32 [n_occ, dim], touched uint8 [n_rows] (all 0, left all 0),
 * slot int64 [n_rows] (scratch), rows int64 [>= n_occ] and values float32 [>= n_occ, dim] (out).
 * Returns the number of unique rows U: rows[:U] increasing, values[:U] their summed gradients. */
static PyObject *py_coalesce(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uintptr_t p[6];
    Py_ssize_t s[3];
    Py_ssize_t unique;
    (void)self;
    CHECK_NARGS("coalesce", 9);
    if (parse_ptrs(args, 1, p) < 0 || parse_sizes(args + 1, 1, s) < 0 ||
        parse_ptrs(args + 2, 1, p + 1) < 0 || parse_sizes(args + 3, 2, s + 1) < 0 ||
        parse_ptrs(args + 5, 4, p + 2) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    unique = coalesce_rows((const int64_t *)p[0], s[0], (const float *)p[1], s[1], s[2],
                           (uint8_t *)p[2], (int64_t *)p[3], (int64_t *)p[4], (float *)p[5]);
    Py_END_ALLOW_THREADS
    if (unique < 0) {
        PyErr_SetString(PyExc_IndexError, "an embedding row index is outside the table");
        return NULL;
    }
    return PyLong_FromSsize_t(unique);
}

/* 0, or -1 when a row is outside [0, n_rows) (then nothing has been written). */
static int check_rows(const int64_t *rows, Py_ssize_t n, Py_ssize_t n_rows)
{
    for (Py_ssize_t u = 0; u < n; u++)
        if (rows[u] < 0 || rows[u] >= n_rows)
            return -1;
    return 0;
}

/* table[rows[u]] = table[rows[u]] - values[u] * lr   (torch: rows.sub_(values * lr)) */
static void sgd_update(const int64_t *rows, Py_ssize_t n, const float *values, Py_ssize_t dim,
                       float *table, float lr)
{
    for (Py_ssize_t u = 0; u < n; u++) {
        float *t = table + rows[u] * dim;
        const float *v = values + u * dim;
        for (Py_ssize_t d = 0; d < dim; d++)
            t[d] = t[d] - v[d] * lr;
    }
}

/* sums[rows[u]] = out[u] = sums[rows[u]] + values[u] * values[u]
 * (torch: sum_rows = sums[rows].add_(values * values); sums[rows] = sum_rows) */
static void adagrad_sums(const int64_t *rows, Py_ssize_t n, const float *values, Py_ssize_t dim,
                         float *sums, float *out)
{
    for (Py_ssize_t u = 0; u < n; u++) {
        float *s = sums + rows[u] * dim;
        const float *v = values + u * dim;
        float *o = out + u * dim;
        for (Py_ssize_t d = 0; d < dim; d++) {
            float x = s[d] + v[d] * v[d];
            s[d] = x;
            o[d] = x;
        }
    }
}

/* table[rows[u]] = table[rows[u]] - (values[u] / (root[u] + eps)) * lr
 * (torch: std = root.add_(eps); rows.sub_((values / std).mul_(lr))) */
static void adagrad_apply(const int64_t *rows, Py_ssize_t n, const float *values, Py_ssize_t dim,
                          const float *root, float *table, float lr, float eps)
{
    for (Py_ssize_t u = 0; u < n; u++) {
        float *t = table + rows[u] * dim;
        const float *v = values + u * dim;
        const float *q = root + u * dim;
        for (Py_ssize_t d = 0; d < dim; d++) {
            float std = q[d] + eps;
            t[d] = t[d] - (v[d] / std) * lr;
        }
    }
}

static int parse_float(PyObject *arg, float *out)
{
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    *out = (float)x; /* round to nearest, as torch casts a Python scalar for a float32 op */
    return 0;
}

/* Parses (rows_ptr, n, values_ptr, dim, n_rows) and checks the rows; -1 with an error set. */
static int parse_row_args(PyObject *const *args, uintptr_t *p, Py_ssize_t *s)
{
    if (parse_ptrs(args, 1, p) < 0 || parse_sizes(args + 1, 1, s) < 0 ||
        parse_ptrs(args + 2, 1, p + 1) < 0 || parse_sizes(args + 3, 2, s + 1) < 0)
        return -1;
    if (check_rows((const int64_t *)p[0], s[0], s[2]) < 0) {
        PyErr_SetString(PyExc_IndexError, "an embedding row index is outside the table");
        return -1;
    }
    return 0;
}

/* sgd_rows(rows_ptr, n, values_ptr, dim, n_rows, table_ptr, lr)
 * rows int64 [n] (unique), values float32 [n, dim], table float32 [n_rows, dim] (updated). */
static PyObject *py_sgd_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uintptr_t p[3];
    Py_ssize_t s[3];
    float lr;
    (void)self;
    CHECK_NARGS("sgd_rows", 7);
    if (parse_row_args(args, p, s) < 0 || parse_ptrs(args + 5, 1, p + 2) < 0 ||
        parse_float(args[6], &lr) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    sgd_update((const int64_t *)p[0], s[0], (const float *)p[1], s[1], (float *)p[2], lr);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* adagrad_sum_rows(rows_ptr, n, values_ptr, dim, n_rows, sums_ptr, out_ptr)
 * sums float32 [n_rows, dim] (updated), out float32 [n, dim]: the rows' new sums. */
static PyObject *py_adagrad_sum_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uintptr_t p[4];
    Py_ssize_t s[3];
    (void)self;
    CHECK_NARGS("adagrad_sum_rows", 7);
    if (parse_row_args(args, p, s) < 0 || parse_ptrs(args + 5, 2, p + 2) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    adagrad_sums((const int64_t *)p[0], s[0], (const float *)p[1], s[1], (float *)p[2],
                 (float *)p[3]);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* adagrad_apply_rows(rows_ptr, n, values_ptr, dim, n_rows, root_ptr, table_ptr, lr, eps)
 * root float32 [n, dim]: the square roots of the rows' sums; table float32 [n_rows, dim]. */
static PyObject *py_adagrad_apply_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uintptr_t p[4];
    Py_ssize_t s[3];
    float lr, eps;
    (void)self;
    CHECK_NARGS("adagrad_apply_rows", 9);
    if (parse_row_args(args, p, s) < 0 || parse_ptrs(args + 5, 2, p + 2) < 0 ||
        parse_float(args[7], &lr) < 0 || parse_float(args[8], &eps) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    adagrad_apply((const int64_t *)p[0], s[0], (const float *)p[1], s[1], (const float *)p[2],
                  (float *)p[3], lr, eps);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"coalesce", (PyCFunction)(void (*)(void))py_coalesce, METH_FASTCALL,
     "coalesce(index_ptr, n_occ, grad_ptr, dim, n_rows, touched_ptr, slot_ptr, rows_ptr, "
     "values_ptr) -> number of unique rows"},
    {"sgd_rows", (PyCFunction)(void (*)(void))py_sgd_rows, METH_FASTCALL,
     "sgd_rows(rows_ptr, n, values_ptr, dim, n_rows, table_ptr, lr)"},
    {"adagrad_sum_rows", (PyCFunction)(void (*)(void))py_adagrad_sum_rows, METH_FASTCALL,
     "adagrad_sum_rows(rows_ptr, n, values_ptr, dim, n_rows, sums_ptr, out_ptr)"},
    {"adagrad_apply_rows", (PyCFunction)(void (*)(void))py_adagrad_apply_rows, METH_FASTCALL,
     "adagrad_apply_rows(rows_ptr, n, values_ptr, dim, n_rows, root_ptr, table_ptr, lr, eps)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_engine", "Sparse embedding-gradient and row-update kernels (float32).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__engine(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI_VERSION", 2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
