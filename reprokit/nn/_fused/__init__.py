"""Optional compiled CPU kernels: SmeLU and gSmeLU (``smelu.c``), and the vectorized engine's
sparse embedding step: gradient coalescing and row updates (``engine_kernels.c``).

``pip install`` builds ``_smelu`` and ``_engine`` as optional extensions: where no C compiler
exists the build is skipped and :mod:`reprokit.nn.functional` and
:mod:`reprokit.training.vectorized` use their torch-ops paths, which give bitwise the same results
(tests/test_activations_fused.py, tests/test_vectorized_fused.py), only slower. Whether the
kernels are used:

* :func:`available` - the SmeLU extension was built and loads (``engine`` is None when the
  engine extension was not);
* :func:`enabled` (and the flags ``ACTIVE`` and ``ENGINE_ACTIVE`` that the hot paths read) -
  built, and not switched off by the environment variable ``REPROKIT_DISABLE_FUSED`` (any value
  but ``""``, ``0``, ``false``, ``no``, ``off``), or by the :func:`disabled` context manager
  (benchmarks, tests); both switches turn off both extensions.

The variable is read when this module is first imported (so one process uses one path
throughout) and again by :func:`refresh`. Both paths give the same bits, so the choice only
changes speed.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = [
    "ACTIVE",
    "ENGINE_ACTIVE",
    "ENV_VAR",
    "available",
    "disabled",
    "enabled",
    "engine",
    "kernel",
    "refresh",
    "threading_backend",
]

ENV_VAR = "REPROKIT_DISABLE_FUSED"
_ABI_VERSION = 2
_ENGINE_ABI_VERSION = 2  # engine_kernels.c's ABI_VERSION
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})

try:  # pragma: no branch - which side runs depends on the build
    from reprokit.nn._fused import _smelu as _ext
except ImportError:  # not built (no compiler), or built for another Python
    _ext = None
if _ext is not None and getattr(_ext, "ABI_VERSION", None) != _ABI_VERSION:
    _ext = None  # a stale build from an older smelu.c: do not call it

kernel = _ext
"""The extension module (``smelu_fwd``, ``gsmelu_fwd``, ``hard_sigmoid_bwd``; see smelu.c), or
None."""

try:  # pragma: no branch - which side runs depends on the build
    from reprokit.nn._fused import _engine as engine
except ImportError:
    engine = None
if engine is not None and getattr(engine, "ABI_VERSION", None) != _ENGINE_ABI_VERSION:
    engine = None
"""The engine extension (``coalesce``, ``sgd_rows``, ``adagrad_sum_rows``,
``adagrad_apply_rows``; see engine_kernels.c), or None. Used only while ``ENGINE_ACTIVE``."""

_OPENMP_NAMES = ("libgomp", "libiomp5", "libomp")


def _loaded_openmp_runtimes() -> list[Path]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; [] elsewhere)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            path = Path(fields[5])
            if path.name.startswith(_OPENMP_NAMES) and ".so" in path.name and path not in paths:
                paths.append(path)
    return paths


def _find_torch_gomp_parallel() -> tuple[int, str]:
    """The address of ``GOMP_parallel`` in the OpenMP runtime torch uses, and its path.

    Only a runtime that is already loaded is taken (``RTLD_NOLOAD``): the one in torch's own
    folder, or else the only one loaded. (0, reason) when torch's intra-op backend is not OpenMP
    or the runtime cannot be told apart; the kernels then start pthreads of their own.
    """
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return 0, "torch's intra-op backend is not OpenMP"
    found = _loaded_openmp_runtimes()
    torch_dir = Path(torch.__file__).resolve().parent
    own = [p for p in found if torch_dir in p.resolve().parents]
    candidates = own or (found if len(found) == 1 else [])
    if len(candidates) != 1:
        return 0, f"no single OpenMP runtime of torch's found (loaded: {[str(p) for p in found]})"
    path = candidates[0]
    try:
        lib = ctypes.CDLL(str(path), mode=getattr(os, "RTLD_NOLOAD", 4) | os.RTLD_LOCAL)
        address = ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value or 0
    except (OSError, AttributeError) as exc:
        return 0, f"{path}: {exc}"
    return address, str(path)


threading_backend = "none"
"""How the kernels run on several threads: ``"openmp:<path>"`` (torch's own OpenMP worker threads),
``"pthreads"`` (threads started per call), or ``"none"`` (no kernels)."""
_openmp_address = 0
if _ext is not None:
    _openmp_address, _where = _find_torch_gomp_parallel()
    _ext.set_openmp(_openmp_address)
    threading_backend = f"openmp:{_where}" if _openmp_address else "pthreads"

_force_off = 0
_env_off = False

ACTIVE = False
"""Whether eligible tensors take the fused path now (= :func:`enabled`); kept up to date by
:func:`refresh` and :func:`disabled`."""
ENGINE_ACTIVE = False
"""The same for the engine kernels (they are built separately, so may be missing alone)."""


def _update() -> None:
    global ACTIVE, ENGINE_ACTIVE
    switched_off = _env_off or _force_off
    ACTIVE = _ext is not None and not switched_off
    ENGINE_ACTIVE = engine is not None and not switched_off


def refresh() -> bool:
    """Re-read ``REPROKIT_DISABLE_FUSED`` from the environment; returns :func:`enabled`."""
    global _env_off
    _env_off = os.environ.get(ENV_VAR, "").strip().lower() not in _FALSE_WORDS
    _update()
    return ACTIVE


def available() -> bool:
    """True when the compiled kernels were built and load."""
    return _ext is not None


def enabled() -> bool:
    """True when eligible tensors take the fused path (see the module docstring)."""
    return ACTIVE


@contextmanager
def disabled() -> Iterator[None]:
    """Use the torch-ops path inside the ``with`` block (in this process, all threads)."""
    global _force_off
    _force_off += 1
    _update()
    try:
        yield
    finally:
        _force_off -= 1
        _update()


refresh()
