"""``ssmcore.warmup``: compile (or load) every op's Numba kernels before the first real call.

The Numba kernels compile lazily, once per argument-type signature, and are then
cached on disk (``cache=True``; see ``ssmcore/backends/numba/_jit.py``). A fresh
process with an empty cache pays seconds per op on its first call; with the
cache filled it only loads machine code. :func:`warmup` fills the cache: it runs
tiny calls of every op, forward and (``backward=True``) through :func:`ssmcore.vjp`,
for the common dtypes and for every argument combination the launchers turn into
a different kernel:

* serial and parallel drivers: a launcher picks its ``prange`` driver only above a
  work threshold (and with more than one Numba thread), so each op is called at
  a small size *and* at a size just above its module's threshold (read from the
  constants the launchers use, so the two cannot drift apart); during the warm-up
  Numba may use all its threads (a Dask worker running with one thread still
  warms the parallel drivers);
* the linear scan's three paths (serial, channels, chunked: ``choose_path``);
* dtypes: float32 and float64, plus complex64/complex128 where the op takes
  complex data (for ``selective_scan``/``selective_state_update``/
  ``lti_simulate_diag`` "complex" means a complex system with real inputs, the
  S4D/Mamba-complex case); every mode of ``lti_simulate``/``lti_simulate_diag``;
  every discretisation method.

Options that are plain values inside the kernels (``reverse``, ``h0`` given or not,
``return_final_state``, ``delta_softplus``, ``D``/``z`` present: the launchers pass
zeros and flags, never ``None``, so they do not add signatures) are still varied
where cheap, so that a launcher change adding a signature stays covered.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["DTYPES", "warmup"]

#: Every dtype name :func:`warmup` accepts (its default).
DTYPES = ("float32", "float64", "complex64", "complex128")

_REAL = ("float32", "float64")
_ALL = DTYPES


def _ones(x: Any) -> Any:
    """A cotangent of ones shaped like an op's output (tuples kept)."""
    if isinstance(x, tuple):
        return tuple(_ones(e) for e in x)
    return np.ones_like(x)


class _Runner:
    """Runs an op's calls: forward as the public function, and through vjp with backward."""

    def __init__(self, backward: bool) -> None:
        self.backward = backward

    def __call__(self, op: str, *args: Any, fwd_only: bool = False, **kwargs: Any) -> None:
        import ssmcore

        getattr(ssmcore, op)(*args, **kwargs)
        if self.backward and not fwd_only:
            out, pullback = ssmcore.vjp(op, *args, **kwargs)
            pullback(_ones(out))


def _real_of(dt: np.dtype) -> np.dtype:
    return np.empty(0, dt).real.dtype


def _uniform(shape: tuple[int, ...], dt: np.dtype, lo: float = 0.2, hi: float = 0.9) -> np.ndarray:
    """Deterministic values in [lo, hi) (real part; complex gets a small imaginary part)."""
    n = int(np.prod(shape))
    v = lo + (hi - lo) * ((np.arange(n) * 0.6180339887) % 1.0)
    x = v.reshape(shape)
    if np.dtype(dt).kind == "c":
        x = x + 0.1j * x[::-1].reshape(shape)
    return x.astype(dt)


# ----------------------------------------------------------------------------- per op


def _linear_scan(run: _Runner, dt: np.dtype) -> None:
    from .backends.numba import scan

    # One size per path of choose_path: serial, channels (too short to chunk), chunked (one channel).
    l_ch = min(scan.CHUNK_MIN_L - 1, scan.SERIAL_MAX)
    sizes = [(2, 8), (scan.SERIAL_MAX // l_ch + 1, l_ch), (1, max(scan.CHUNK_MIN_L, scan.SERIAL_MAX + 1))]
    for C, L in sizes:
        a, b = _uniform((C, L), dt), _uniform((C, L), dt, -1.0, 1.0)
        run("linear_scan", a, b, return_final_state=True)
        run("linear_scan", a[:, :1], b, b[:, 0], reverse=True)  # constant-in-time a, h0 given


def _selective_scan(run: _Runner, dt: np.dtype) -> None:
    rdt = _real_of(dt)
    # (1, 32, ...): 32 channels of variable B/C take the float32 lane kernel (LANES in
    # backends/numba/selective_scan.py); the others the general one
    for nb, D, L, N in ((1, 2, 8, 4), (2, 4, 300, 8), (1, 32, 8, 4)):
        u, delta = _uniform((nb, D, L), rdt, -1.0, 1.0), _uniform((nb, D, L), rdt, 0.01, 0.1)
        A = -_uniform((D, N), dt)
        B, C = _uniform((nb, N, L), rdt), _uniform((nb, N, L), rdt)  # input-dependent B, C (Mamba)
        run("selective_scan", u, delta, A, B, C, return_last_state=True)
        run("selective_scan", u, delta, A, _uniform((D, N), dt), _uniform((D, N), dt), np.ones(D, rdt),
            u, np.zeros(D, rdt), True, h0=np.zeros((nb, D, N), dt), reverse=True)


def _selective_state_update(run: _Runner, dt: np.dtype) -> None:
    from .backends.numba import state_update

    rdt = _real_of(dt)
    N = 16
    # serial below _PARALLEL_MIN states per step, prange above
    for nb, D in ((1, 2), (4, -(-state_update._PARALLEL_MIN // (4 * N)))):
        state = np.zeros((nb, D, N), dt)
        x, dtv = _uniform((nb, D), rdt, -1.0, 1.0), _uniform((nb, D), rdt, 0.01, 0.1)
        A = -_uniform((D, N), dt)
        B, C = _uniform((nb, N), rdt), _uniform((nb, N), rdt)
        run("selective_state_update", state, x, dtv, A, B, C)
        extra = (np.ones(D, rdt), x, np.zeros(D, rdt), True, np.arange(nb))
        run("selective_state_update", state, x, dtv, A, B, C, *extra)
        run("selective_state_update", state.copy(), x, dtv, A, B, C, *extra, inplace=True, fwd_only=True)


def _ssd(run: _Runner, dt: np.dtype) -> None:
    from .backends.numba import ssd

    H, P, N, G = 2, 4, 8, 1
    for nb, L in ((1, 8), (2, -(-ssd.PARALLEL_MIN_WORK // (2 * H * P * N)))):
        x, dtv = _uniform((nb, L, H, P), dt, -1.0, 1.0), _uniform((nb, L, H), dt, 0.01, 0.1)
        A = -_uniform((H,), dt)
        B, C = _uniform((nb, L, G, N), dt), _uniform((nb, L, G, N), dt)
        run("ssd", x, dtv, A, B, C, chunk_size=4, return_final_states=True)
        run("ssd", x, dtv, A, B, C, chunk_size=4, D=np.ones(H, dt), z=x, dt_bias=np.zeros(H, dt),
            dt_softplus=True, initial_states=np.zeros((nb, H, P, N), dt), seq_idx=np.zeros((nb, L), np.int32))


def _lti_sizes() -> list[tuple[int, int]]:
    """(batch, L) pairs for the serial and the prange drivers of backends/numba/lti.py."""
    from .backends.numba import lti

    return [(1, 16), (2, -(-lti._PARALLEL_MIN_WORK // 16))]  # work >= threshold at N = 4 (step work >= 16)


def _lti_simulate(run: _Runner, dt: np.dtype) -> None:
    n = 4
    A = (0.5 * np.eye(n) + 0.05 * _uniform((n, n), np.float64)).astype(dt)
    B, C, D = _uniform((n, 1), dt), _uniform((1, n), dt), _uniform((1, 1), dt)
    for nb, L in _lti_sizes():
        u = _uniform((nb, 1, L), dt, -1.0, 1.0)
        for mode in ("recurrent", "scan", "convolution"):
            run("lti_simulate", A, B, C, D, u, mode=mode, return_final_state=True)
            run("lti_simulate", A, B, C, None, u, np.ones((nb, n), dt), mode=mode)


def _lti_simulate_diag(run: _Runner, dt: np.dtype) -> None:
    rdt = _real_of(dt)
    H, N = 2, 8
    A = (-_uniform((H, N), dt) * 0.1 + 0.9).astype(dt)
    for nb, L in _lti_sizes():
        L = -(-L // 4)  # the diagonal step does N = 8 multiply-adds of H = 2 channels
        u = _uniform((nb, H, L), rdt, -1.0, 1.0)
        for mode in ("recurrent", "scan", "convolution"):
            for conj_sym, real_output in ((False, None), (True, True), (False, False)):
                if real_output is False and dt.kind != "c":
                    continue
                run("lti_simulate_diag", A, _uniform((H, N), dt), _uniform((H, N), dt), np.ones(H, rdt), u,
                    conj_sym=conj_sym, real_output=real_output, mode=mode, return_final_state=True)
            run("lti_simulate_diag", A, _uniform((H, N), dt), _uniform((H, N), dt), None, u,
                np.ones((nb, H, N), dt), mode=mode)


def _discretize(run: _Runner, dt: np.dtype) -> None:
    from ._discretization import DENSE_METHODS
    from .backends.numba import discretization

    rdt = _real_of(dt)
    n = 4
    A = (-np.eye(n) + 0.1 * _uniform((n, n), np.float64)).astype(dt)
    B = _uniform((n, 2), dt)
    big = -(-discretization.PARALLEL_MIN_WORK // n**3)  # the expm's prange driver
    for method in DENSE_METHODS:
        alpha = 0.3 if method == "gbt" else None
        run("discretize", A, B, rdt.type(0.1), method, alpha)
    run("discretize", np.broadcast_to(A, (big, n, n)).copy(), B, np.full(big, 0.1, rdt))


def _discretize_diag(run: _Runner, dt: np.dtype) -> None:
    from ._discretization import DIAG_METHODS
    from .backends.numba import discretization

    rdt = _real_of(dt)
    for R, N in ((2, 4), (-(-discretization.PARALLEL_MIN_WORK // 128), 64)):
        A, B = -_uniform((R, N), dt), _uniform((R, N), dt)
        for method in DIAG_METHODS:
            alpha = 0.3 if method == "gbt" else None
            run("discretize_diag", A, B, _uniform((R, 1), rdt, 0.01, 0.1), method, alpha)


def _lfilter(run: _Runner, dt: np.dtype) -> None:
    from .backends.numba import lfilter

    for C, L in ((1, 16), (2, -(-lfilter.PARALLEL_MIN_WORK // 6))):
        x = _uniform((C, L), dt, -1.0, 1.0)
        for b, a in (([0.5, 0.5], [1.0, -0.5]), ([0.2, 0.3, 0.2], [1.0, -0.4, 0.1]), ([0.1, 0.2, 0.3, 0.4], [1.0])):
            b, a = np.asarray(b, dt), np.asarray(a, dt)
            run("lfilter", b, a, x)
            run("lfilter", b, a, x, -1, np.zeros((C, max(len(a), len(b)) - 1), dt))


def _fft_conv(run: _Runner, dt: np.dtype) -> None:
    for nb, H, L in ((1, 2, 16), (2, 4, 4096)):
        u, K = _uniform((nb, H, L), dt, -1.0, 1.0), _uniform((H, L), dt)
        run("fft_conv", u, K, np.ones(H, dt))
        run("fft_conv", u, np.stack([K, K]), bidirectional=True)


def _ssm_kernel_dense(run: _Runner, dt: np.dtype) -> None:
    n = 4
    A = (0.5 * np.eye(n) + 0.05 * _uniform((n, n), np.float64)).astype(dt)
    for H, L in ((1, 8), (64, 1024)):
        run("ssm_kernel_dense", np.broadcast_to(A, (H, n, n)).copy(), _uniform((H, n), dt), _uniform((H, n), dt), L)


def _ssm_kernel_diag(run: _Runner, dt: np.dtype) -> None:
    rdt = _real_of(dt)
    for H, N, L in ((1, 4, 8), (16, 32, 1024)):
        A = (-_uniform((H, N), np.float64) + 1j * _uniform((H, N), np.float64)).astype(
            np.result_type(dt, np.complex64))
        for method in ("zoh", "bilinear"):
            for conj_sym in (True, False):
                run("ssm_kernel_diag", A, _uniform((H, N), dt), _uniform((H, N), dt), _uniform((H,), rdt, 0.01, 0.1),
                    L, method=method, conj_sym=conj_sym)


def _ssm_kernel_dplr(run: _Runner, dt: np.dtype) -> None:
    rdt = _real_of(dt)
    cdt = np.result_type(dt, np.complex64)
    for H, N, L in ((1, 4, 8), (16, 32, 1024)):
        lam = (-_uniform((H, N), np.float64) + 1j * _uniform((H, N), np.float64)).astype(cdt)
        run("ssm_kernel_dplr", lam, 0.1 * _uniform((1, H, N), cdt), _uniform((H, N), cdt), _uniform((1, H, N), cdt),
            _uniform((H,), rdt, 0.01, 0.1), L)


#: op -> (warmer, dtypes it has kernels for). Every registered op with a Numba kernel.
_OPS: dict[str, tuple[Callable[[_Runner, np.dtype], None], tuple[str, ...]]] = {
    "discretize": (_discretize, _ALL),
    "discretize_diag": (_discretize_diag, _ALL),
    "fft_conv": (_fft_conv, _REAL),
    "lfilter": (_lfilter, _ALL),
    "linear_scan": (_linear_scan, _ALL),
    "lti_simulate": (_lti_simulate, _ALL),
    "lti_simulate_diag": (_lti_simulate_diag, _ALL),
    "selective_scan": (_selective_scan, _ALL),
    "selective_state_update": (_selective_state_update, _ALL),
    "ssd": (_ssd, _REAL),
    "ssm_kernel_dense": (_ssm_kernel_dense, _REAL),
    "ssm_kernel_diag": (_ssm_kernel_diag, _REAL),
    "ssm_kernel_dplr": (_ssm_kernel_dplr, _REAL),
}


@contextlib.contextmanager
def _all_threads() -> Iterator[None]:
    """Let Numba use every thread while warming, so that the launchers reach their prange drivers."""
    import numba

    prev = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    try:
        yield
    finally:
        numba.set_num_threads(prev)


def _check_names(kind: str, given: Iterable[str], known: Sequence[str]) -> list[str]:
    given = [given] if isinstance(given, str) else list(given)
    bad = [g for g in given if g not in known]
    if bad:
        raise ValueError(f"warmup: unknown {kind} {bad}; expected a subset of {list(known)}")
    return given


def warmup(
    ops: Iterable[str] | None = None,
    dtypes: Iterable[str] | None = None,
    *,
    backward: bool = True,
    verbose: bool = False,
) -> dict[str, float]:
    """Compile (or load from the cache) the Numba kernels of the ops, so first calls are fast.

    Runs tiny calls of every op (and, with ``backward``, their pullbacks through
    :func:`vjp`) for the given dtypes and for every option combination that selects a
    different compiled kernel: the serial and parallel drivers, the linear scan's
    three paths, every mode of ``lti_simulate``/``lti_simulate_diag``, every
    discretisation method. With Numba's on-disk cache (``NUMBA_CACHE_DIR``, see
    ``python -m ssmcore info``) the compiled code then serves every later process on
    this machine: run it once when building an image (``python -m ssmcore warmup``)
    or on each Dask worker (:func:`ssmcore.dask.warm_up`). Calling it again is cheap
    (the kernels load from the cache).

    Parameters
    ----------
    ops : iterable of str, optional
        Op names (see :func:`list_ops`); None warms every op that has a Numba kernel.
    dtypes : iterable of str, optional
        Among ``"float32"``, ``"float64"``, ``"complex64"``, ``"complex128"``; None
        means all four. Each op warms those it supports (complex ones only where it
        takes complex data; for ``selective_scan`` a complex dtype means complex
        ``A`` with real inputs of the matching precision).
    backward : bool, default True
        Also run every op's pullback (:func:`vjp`), compiling its backward kernels.
    verbose : bool, default False
        Print one line per op (name and seconds) as it finishes.

    Returns
    -------
    dict of str to float
        Seconds spent per op, in the order warmed: compile time with an empty
        cache, load time with a warm one.

    Raises
    ------
    ValueError
        If ``ops`` or ``dtypes`` names something unknown.

    See Also
    --------
    list_ops : The names of all registered ops.
    vjp : Evaluate an op with its pullback.

    Examples
    --------
    >>> import ssmcore
    >>> seconds = ssmcore.warmup(ops=["discretize_diag"], dtypes=["float64"], backward=False)
    >>> list(seconds)
    ['discretize_diag']
    >>> seconds["discretize_diag"] >= 0
    True
    """
    names = list(_OPS) if ops is None else _check_names("ops", ops, list(_OPS))
    wanted = DTYPES if dtypes is None else tuple(_check_names("dtypes", dtypes, DTYPES))
    run = _Runner(bool(backward))
    seconds: dict[str, float] = {}
    with _all_threads(), np.errstate(all="ignore"):
        for name in names:
            warmer, supported = _OPS[name]
            t0 = time.perf_counter()
            for dt in supported:
                if dt in wanted:
                    warmer(run, np.dtype(dt))
            seconds[name] = time.perf_counter() - t0
            if verbose:
                print(f"{name:<24} {seconds[name]:8.2f} s", flush=True)
    return seconds


# ----------------------------------------------------------------------------- coverage check


def _dispatchers() -> Iterator[tuple[str, Any]]:
    """``(module.function, dispatcher)`` of every Numba dispatcher of ssmcore's CPU kernels."""
    import importlib
    import pkgutil

    from numba.core.dispatcher import Dispatcher

    from .backends import numba as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for attr, obj in vars(mod).items():
            disp = getattr(obj, "dispatcher", obj)  # parallel kernels come wrapped by the workqueue guard
            if isinstance(disp, Dispatcher) and getattr(disp.py_func, "__module__", None) == mod.__name__:
                yield f"{info.name}.{attr}", disp


def compiled_signatures() -> dict[str, set[str]]:
    """``module.function -> signatures`` in memory now (compiled or loaded from the cache).

    Signatures that appear after :func:`warmup` for a real call are kernels the
    warm-up missed (the tests check this).
    """
    return {name: {str(sig) for sig in d.signatures} for name, d in _dispatchers()}


def compile_counts() -> dict[str, int]:
    """``module.function -> signatures compiled in this process`` (Numba cache misses), nonzero only.

    In a fresh process after :func:`warmup` into the same cache, a call that
    compiles nothing leaves this empty (``benchmarks/first_call.py`` reports it).
    """
    out = {name: sum(d.stats.cache_misses.values()) for name, d in _dispatchers()}
    return {k: v for k, v in out.items() if v}
