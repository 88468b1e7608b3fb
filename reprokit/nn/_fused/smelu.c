/* Fused CPU kernels for SmeLU and gSmeLU (reprokit.nn.functional).
 *
 * Each kernel is one pass over contiguous float32 or float64 memory and performs exactly the
 * same IEEE operations, in the same order and at the same precision, as the torch-ops path in
 * reprokit/nn/functional.py (_smelu_into, _gsmelu_into, _hard_sigmoid_times). Built with
 * -ffp-contract=off and without -ffast-math, the results are therefore bitwise equal to that
 * path (tests/test_activations_fused.py checks it). The scalar parameters arrive as Python
 * floats (C doubles) and, for float32 data, are rounded to float first, as torch does with a
 * Python scalar operand of a float32 tensor.
 *
 * min / max / clamp follow the x86 SIMD semantics that torch's vectorised kernels use:
 *   max(a, b) = a > b ? a : b      clamp(v, lo, hi) = min(hi, max(lo, v))
 * so a NaN input gives a NaN output (its payload may differ from torch's).
 *
 * Large tensors are cut into blocks that up to torch.get_num_threads() threads share out: the
 * worker threads of torch's own OpenMP runtime where reprokit.nn._fused found it (set_openmp),
 * else plain pthreads created for the call. This file is not compiled with -fopenmp, so it adds
 * no OpenMP runtime of its own. Every element is computed independently, so the result does not
 * depend on the number of threads. The GIL is released while computing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* One binary, the best vector width the CPU has (the results do not depend on it). */
#define REPROKIT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define REPROKIT_CLONES
#endif

#define MAX_THREADS 64
/* Fewest elements per thread: torch's grain size for elementwise ops when the threads are
 * torch's OpenMP workers (already running); more when a pthread must be created for the call. */
#define MIN_PER_THREAD_OPENMP 32768
#define MIN_PER_THREAD_PTHREADS 262144

enum { OP_SMELU_FWD = 0, OP_GSMELU_FWD = 1, OP_HARD_SIGMOID_BWD = 2 };

typedef struct {
    int op;
    int is_double;
    const void *x;
    const void *grad;
    void *out;
    Py_ssize_t begin, end;
    double p[6];
    int flags;
} job_t;

#define MAXV(a, b) ((a) > (b) ? (a) : (b))
#define MINV(a, b) ((a) < (b) ? (a) : (b))
#define CLAMP(v, lo, hi) MINV((hi), MAXV((lo), (v)))

/* ---- SmeLU forward: s = clamp(x*a + b, 0, root); y = max(s*s, x) ----------------------- */
#define SMELU_FWD(NAME, T)                                                                      \
    REPROKIT_CLONES static void NAME(const T *restrict x, T *restrict y, Py_ssize_t n,         \
                                     T a, T b, T root)                                         \
    {                                                                                           \
        const T zero = (T)0;                                                                    \
        for (Py_ssize_t i = 0; i < n; i++) {                                                    \
            T v = x[i];                                                                         \
            T s = v * a;                                                                        \
            s = s + b;                                                                          \
            s = CLAMP(s, zero, root);                                                           \
            s = s * s;                                                                          \
            y[i] = MAXV(s, v);                                                                  \
        }                                                                                       \
    }
SMELU_FWD(smelu_fwd_f32, float)
SMELU_FWD(smelu_fwd_f64, double)

/* ---- gSmeLU forward ---------------------------------------------------------------------
 * s = clamp(x*k + ak, 0, root)^2; then (c != 0) s = max(s - c, x) + c, else s = max(s, x);
 * then s *= g (g != 1); s += t (t != 0). flags bit 0: c != 0, bit 1: g != 1, bit 2: t != 0. */
#define GSMELU_FWD(NAME, T)                                                                     \
    REPROKIT_CLONES static void NAME(const T *restrict x, T *restrict y, Py_ssize_t n, T k,   \
                                     T ak, T root, T c, T g, T t, int flags)                   \
    {                                                                                           \
        const T zero = (T)0;                                                                    \
        const int use_c = flags & 1, use_g = flags & 2, use_t = flags & 4;                      \
        for (Py_ssize_t i = 0; i < n; i++) {                                                    \
            T v = x[i];                                                                         \
            T s = v * k;                                                                        \
            s = s + ak;                                                                         \
            s = CLAMP(s, zero, root);                                                           \
            s = s * s;                                                                          \
            if (use_c) {                                                                        \
                s = s - c;                                                                      \
                s = MAXV(s, v);                                                                 \
                s = s + c;                                                                      \
            } else {                                                                            \
                s = MAXV(s, v);                                                                 \
            }                                                                                   \
            if (use_g)                                                                          \
                s = s * g;                                                                      \
            if (use_t)                                                                          \
                s = s + t;                                                                      \
            y[i] = s;                                                                           \
        }                                                                                       \
    }
GSMELU_FWD(gsmelu_fwd_f32, float)
GSMELU_FWD(gsmelu_fwd_f64, double)

/* ---- backward of both: out = clamp(x*scale + shift, 0, 1) * grad [* g if flags bit 1] ---- */
#define HS_BWD(NAME, T)                                                                         \
    REPROKIT_CLONES static void NAME(const T *restrict x, const T *restrict gr, T *restrict o, \
                                     Py_ssize_t n, T scale, T shift, T g, int flags)           \
    {                                                                                           \
        const T zero = (T)0, one = (T)1;                                                        \
        if (flags & 2) {                                                                        \
            for (Py_ssize_t i = 0; i < n; i++) {                                                \
                T m = x[i] * scale;                                                             \
                m = m + shift;                                                                  \
                m = CLAMP(m, zero, one);                                                        \
                m = m * gr[i];                                                                  \
                o[i] = m * g;                                                                   \
            }                                                                                   \
        } else {                                                                                \
            for (Py_ssize_t i = 0; i < n; i++) {                                                \
                T m = x[i] * scale;                                                             \
                m = m + shift;                                                                  \
                m = CLAMP(m, zero, one);                                                        \
                o[i] = m * gr[i];                                                               \
            }                                                                                   \
        }                                                                                       \
    }
HS_BWD(hs_bwd_f32, float)
HS_BWD(hs_bwd_f64, double)

static void run_job(const job_t *j)
{
    Py_ssize_t n = j->end - j->begin, b = j->begin;
    const double *p = j->p;
    if (n <= 0)
        return;
    if (j->is_double) {
        const double *x = (const double *)j->x + b;
        double *o = (double *)j->out + b;
        switch (j->op) {
        case OP_SMELU_FWD:
            smelu_fwd_f64(x, o, n, p[0], p[1], p[2]);
            break;
        case OP_GSMELU_FWD:
            gsmelu_fwd_f64(x, o, n, p[0], p[1], p[2], p[3], p[4], p[5], j->flags);
            break;
        default:
            hs_bwd_f64(x, (const double *)j->grad + b, o, n, p[0], p[1], p[2], j->flags);
        }
    } else {
        const float *x = (const float *)j->x + b;
        float *o = (float *)j->out + b;
        switch (j->op) {
        case OP_SMELU_FWD:
            smelu_fwd_f32(x, o, n, (float)p[0], (float)p[1], (float)p[2]);
            break;
        case OP_GSMELU_FWD:
            gsmelu_fwd_f32(x, o, n, (float)p[0], (float)p[1], (float)p[2], (float)p[3],
                           (float)p[4], (float)p[5], j->flags);
            break;
        default:
            hs_bwd_f32(x, (const float *)j->grad + b, o, n, (float)p[0], (float)p[1],
                       (float)p[2], j->flags);
        }
    }
}

/* Work sharing: the range is cut into blocks (about BLOCKS_PER_THREAD per thread, within
 * [MIN_BLOCK, MAX_BLOCK] elements) that the threads claim one at a time from a shared counter,
 * the calling thread included. On a busy machine a thread that gets
 * little CPU time simply claims fewer blocks, instead of holding up a fixed share of the work. */
#ifndef MAX_BLOCK
#define MAX_BLOCK 65536
#endif
#define MIN_BLOCK 4096
#ifndef BLOCKS_PER_THREAD
#define BLOCKS_PER_THREAD 4
#endif

typedef struct {
    job_t proto;
    Py_ssize_t n;
    Py_ssize_t block; /* elements per block, a multiple of 16 (64 bytes of float32) */
    Py_ssize_t next;  /* next unclaimed block index, atomically incremented */
} shared_t;

static void work_loop(shared_t *sh)
{
    Py_ssize_t nblocks = (sh->n + sh->block - 1) / sh->block;
    job_t j = sh->proto;
    for (;;) {
        Py_ssize_t b = __atomic_fetch_add(&sh->next, 1, __ATOMIC_RELAXED);
        if (b >= nblocks)
            return;
        j.begin = b * sh->block;
        j.end = MINV(j.begin + sh->block, sh->n);
        run_job(&j);
    }
}

static void *thread_main(void *arg)
{
    work_loop((shared_t *)arg);
    return NULL;
}

/* torch's own OpenMP runtime, when reprokit.nn._fused found it already loaded in the process:
 * GOMP_parallel(fn, data, num_threads, flags) runs fn(data) on a team of num_threads threads, the
 * caller included, and returns when all are done (the entry point of `#pragma omp parallel`, which
 * torch's at::parallel_for uses). Running on torch's own threads keeps the second runtime risk away
 * and keeps pace with torch's ops: its worker threads are already awake (spinning) right after a
 * torch op, while a freshly created pthread would have to compete with them for the cores.
 * The same caveat as for torch's own parallel ops applies: libgomp is not fork-safe, so a forked
 * child that uses more than one torch thread hangs in torch.relu as it would here (torch's
 * DataLoader workers run with torch.set_num_threads(1), and then no team is started). */
typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
static gomp_parallel_fn gomp_parallel = NULL;

static void gomp_body(void *arg)
{
    work_loop((shared_t *)arg);
}

/* Run `proto` over [0, n) on up to `nthreads` threads (the calling one included). */
static void run_parallel(const job_t *proto, Py_ssize_t n, int nthreads)
{
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS];
    shared_t sh;
    if (nthreads > MAX_THREADS)
        nthreads = MAX_THREADS;
    Py_ssize_t min_per = gomp_parallel != NULL ? MIN_PER_THREAD_OPENMP : MIN_PER_THREAD_PTHREADS;
    if ((Py_ssize_t)nthreads > (n + min_per - 1) / min_per)
        nthreads = (int)((n + min_per - 1) / min_per);
    if (nthreads <= 1) {
        job_t j = *proto;
        j.begin = 0;
        j.end = n;
        run_job(&j);
        return;
    }
    sh.proto = *proto;
    sh.n = n;
    sh.next = 0;
    sh.block = (n + BLOCKS_PER_THREAD * (Py_ssize_t)nthreads - 1) /
               (BLOCKS_PER_THREAD * (Py_ssize_t)nthreads);
    sh.block = MAXV((Py_ssize_t)MIN_BLOCK, MINV((Py_ssize_t)MAX_BLOCK, sh.block));
    sh.block = (sh.block + 15) / 16 * 16;
    if (gomp_parallel != NULL) {
        gomp_parallel(gomp_body, &sh, (unsigned)nthreads, 0);
        return;
    }
    for (int t = 1; t < nthreads; t++)
        started[t] = pthread_create(&tids[t], NULL, thread_main, &sh) == 0;
    work_loop(&sh); /* returns when every block is claimed; a failed pthread_create costs nothing */
    for (int t = 1; t < nthreads; t++)
        if (started[t])
            pthread_join(tids[t], NULL);
}

/* ---- Python entry points ----------------------------------------------------------------
 * Called from reprokit/nn/functional.py with the addresses of contiguous buffers of n elements
 * (the caller checks dtype, device, contiguity and sizes) and the parameters as Python floats.
 * METH_FASTCALL with positional arguments only: these run on every activation call. */

static int parse_common(PyObject *const *args, int nptr, uintptr_t *ptrs, Py_ssize_t *n,
                        int *is_double)
{
    for (int i = 0; i < nptr; i++) {
        unsigned long long v = PyLong_AsUnsignedLongLong(args[i]);
        if (v == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        ptrs[i] = (uintptr_t)v;
    }
    *n = PyLong_AsSsize_t(args[nptr]);
    if (*n == -1 && PyErr_Occurred())
        return -1;
    *is_double = PyObject_IsTrue(args[nptr + 1]);
    if (*is_double < 0)
        return -1;
    if (*n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative length");
        return -1;
    }
    for (int i = 0; i < nptr; i++)
        if (*n > 0 && ptrs[i] == 0) {
            PyErr_SetString(PyExc_ValueError, "null buffer");
            return -1;
        }
    return 0;
}

static int parse_doubles(PyObject *const *args, int count, double *out)
{
    for (int i = 0; i < count; i++) {
        out[i] = PyFloat_AsDouble(args[i]);
        if (out[i] == -1.0 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static int parse_int(PyObject *arg, int *out)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = (int)(v > 1 << 20 ? 1 << 20 : v);
    return 0;
}

static PyObject *dispatch(job_t *j, Py_ssize_t n, int nthreads)
{
    if (n > 0) {
        Py_BEGIN_ALLOW_THREADS
        run_parallel(j, n, nthreads < 1 ? 1 : nthreads);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

#define CHECK_NARGS(name, want)                                                                 \
    if (nargs != (want)) {                                                                      \
        PyErr_Format(PyExc_TypeError, name "() takes %d arguments (%zd given)", (want), nargs); \
        return NULL;                                                                            \
    }

/* smelu_fwd(x_ptr, out_ptr, n, is_double, a, b, root, nthreads) */
static PyObject *py_smelu_fwd(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    job_t j;
    uintptr_t ptrs[2];
    Py_ssize_t n;
    int nthreads;
    (void)self;
    CHECK_NARGS("smelu_fwd", 8);
    memset(&j, 0, sizeof j);
    if (parse_common(args, 2, ptrs, &n, &j.is_double) < 0 || parse_doubles(args + 4, 3, j.p) < 0 ||
        parse_int(args[7], &nthreads) < 0)
        return NULL;
    j.op = OP_SMELU_FWD;
    j.x = (const void *)ptrs[0];
    j.out = (void *)ptrs[1];
    return dispatch(&j, n, nthreads);
}

/* gsmelu_fwd(x_ptr, out_ptr, n, is_double, k, ak, root, c, g, t, flags, nthreads) */
static PyObject *py_gsmelu_fwd(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    job_t j;
    uintptr_t ptrs[2];
    Py_ssize_t n;
    int nthreads;
    (void)self;
    CHECK_NARGS("gsmelu_fwd", 12);
    memset(&j, 0, sizeof j);
    if (parse_common(args, 2, ptrs, &n, &j.is_double) < 0 || parse_doubles(args + 4, 6, j.p) < 0 ||
        parse_int(args[10], &j.flags) < 0 || parse_int(args[11], &nthreads) < 0)
        return NULL;
    j.op = OP_GSMELU_FWD;
    j.x = (const void *)ptrs[0];
    j.out = (void *)ptrs[1];
    return dispatch(&j, n, nthreads);
}

/* hard_sigmoid_bwd(x_ptr, grad_ptr, out_ptr, n, is_double, scale, shift, g, flags, nthreads) */
static PyObject *py_hs_bwd(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    job_t j;
    uintptr_t ptrs[3];
    Py_ssize_t n;
    int nthreads;
    (void)self;
    CHECK_NARGS("hard_sigmoid_bwd", 10);
    memset(&j, 0, sizeof j);
    if (parse_common(args, 3, ptrs, &n, &j.is_double) < 0 || parse_doubles(args + 5, 3, j.p) < 0 ||
        parse_int(args[8], &j.flags) < 0 || parse_int(args[9], &nthreads) < 0)
        return NULL;
    j.op = OP_HARD_SIGMOID_BWD;
    j.x = (const void *)ptrs[0];
    j.grad = (const void *)ptrs[1];
    j.out = (void *)ptrs[2];
    return dispatch(&j, n, nthreads);
}

/* set_openmp(address of GOMP_parallel, or 0 for plain pthreads) */
static PyObject *fused_set_openmp(PyObject *self, PyObject *arg)
{
    unsigned long long addr;
    (void)self;
    addr = PyLong_AsUnsignedLongLong(arg);
    if (addr == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    gomp_parallel = (gomp_parallel_fn)(uintptr_t)addr;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"smelu_fwd", (PyCFunction)(void (*)(void))py_smelu_fwd, METH_FASTCALL,
     "smelu_fwd(x_ptr, out_ptr, n, is_double, a, b, root, nthreads):\n"
     "out = max(clamp(x*a + b, 0, root)^2, x)"},
    {"gsmelu_fwd", (PyCFunction)(void (*)(void))py_gsmelu_fwd, METH_FASTCALL,
     "gsmelu_fwd(x_ptr, out_ptr, n, is_double, k, ak, root, c, g, t, flags, nthreads)"},
    {"hard_sigmoid_bwd", (PyCFunction)(void (*)(void))py_hs_bwd, METH_FASTCALL,
     "hard_sigmoid_bwd(x_ptr, grad_ptr, out_ptr, n, is_double, scale, shift, g, flags, "
     "nthreads):\nout = clamp(x*scale + shift, 0, 1) * grad [* g if flags & 2]"},
    {"set_openmp", fused_set_openmp, METH_O,
     "set_openmp(addr): the address of the process's GOMP_parallel, or 0 to use pthreads"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_smelu", "Fused CPU kernels for SmeLU / gSmeLU.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__smelu(void)
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
