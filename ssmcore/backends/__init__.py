"""Private compute backends, one sub-package per device, with the same module names.

``numba/`` holds the CPU kernels, ``cupy/`` (when present) the GPU kernels. Nothing
here is imported by ``import ssmcore``; :func:`ssmcore.dispatch.kernels` imports a
module on the first call that needs it, so Numba compiles lazily.
"""
