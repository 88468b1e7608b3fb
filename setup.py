"""Build step for reprokit's compiled pieces; all metadata lives in pyproject.toml.

``reprokit.nn._fused._smelu`` (reprokit/nn/_fused/smelu.c) holds fused CPU kernels for SmeLU and
gSmeLU; ``reprokit.nn._fused._engine`` (engine_kernels.c) the vectorized engine's sparse
embedding-gradient step. Both are *optional* extensions: where no C compiler (or no pthreads) is
available the build prints a warning and reprokit installs without them, using the torch-ops
paths, which give bitwise the same results, only slower.

Floating-point flags: the kernels must perform exactly the IEEE operations the torch-ops path does,
so floating-point contraction (``a*b + c`` fused into one FMA, a different rounding) is switched
off, and no fast-math option may be used. ``-O3`` vectorises the loops.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

UNIX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-std=gnu11"]
# Flags that would change float results; refused even if the environment's CFLAGS carry them.
UNSAFE_FLAGS = ("-ffast-math", "-Ofast", "-ffp-contract=fast", "-funsafe-math-optimizations")


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "unix":
            for part in ("compiler", "compiler_so"):
                cmd = getattr(self.compiler, part, None)
                if cmd:
                    setattr(self.compiler, part, [a for a in cmd if a not in UNSAFE_FLAGS])
            for ext in self.extensions:
                ext.extra_compile_args = UNIX_FLAGS + list(ext.extra_compile_args)
        else:  # MSVC and others: strict floating point, no contraction
            for ext in self.extensions:
                ext.extra_compile_args = ["/O2", "/fp:strict"] + list(ext.extra_compile_args)
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "reprokit.nn._fused._smelu",
            sources=["reprokit/nn/_fused/smelu.c"],
            libraries=["pthread"],
            optional=True,
        ),
        Extension(
            "reprokit.nn._fused._engine",
            sources=["reprokit/nn/_fused/engine_kernels.c"],
            optional=True,
        ),
    ],
    cmdclass={"build_ext": BuildExt},
)
