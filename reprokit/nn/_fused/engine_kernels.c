/* The sparse embedding-gradient kernel of the vectorized engine (reprokit.training.vectorized).
 *
 * Every training step of the engine sums the per-occurrence gradients of a batch's embedding rows
 * into the unique rows before the optimizer updates those rows. In torch ops that takes half a
 * dozen small kernels (index_fill, nonzero, index_fill, index_copy, index_select, index_add), each
 * re-reading scattered memory; here it is one call.
 *
 * The result is bitwise that of the torch-ops path (EmbeddingGradAccumulator._torch), which
 * tests/test_vectorized_fused.py checks: the unique rows in increasing order, and each row's
 * occurrences summed in occurrence order starting from +0.0f, as index_add_ into a zeroed buffer
 * does (built without floating-point contraction or fast-math, see setup.py).
 *
 * (The row update itself stays in torch ops: torch's float32 sqrt on CPU is MKL's, within 1 ulp
 * rather than correctly rounded, and the engine keeps the bits of torch.optim's Adagrad.)
 * The work per step is small (a batch's rows), so the kernel runs on the calling thread with the
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

static PyMethodDef methods[] = {
    {"coalesce", (PyCFunction)(void (*)(void))py_coalesce, METH_FASTCALL,
     "coalesce(index_ptr, n_occ, grad_ptr, dim, n_rows, touched_ptr, slot_ptr, rows_ptr, "
     "values_ptr) -> number of unique rows"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_engine", "Sparse embedding-gradient kernels (float32).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__engine(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI_VERSION", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
