"""Numba CPU kernels for dense LTI simulation; same functions as ``ssmcore.reference.lti``.

The kernel contract (function signatures, operand layout -- flattened operands
plus an index map ``idx`` (batch, 6) -- returned tuples and the checkpoint
convention) is the docstring of ``ssmcore.reference.lti``. The public functions
here are *launchers*: they make the operands C-contiguous, allocate the outputs,
choose the work split (serial or ``prange`` driver, the scan's chunk length from
``numba.get_num_threads()``, the checkpoint interval) and run a jitted driver
that writes into the buffers they allocated.

Design notes (why the code looks like this):

* The work is split into *jobs* (one batch element, or one time chunk of one
  element for the scan), each a ``_*_job`` function. A serial and a ``prange``
  driver run the same jobs; the public functions pick the serial one when there
  is a single job or little work, because waking the thread pool costs more than
  it saves there (and on a loaded machine a parked worker thread can take
  milliseconds to get a core back).
* Inside a job the time loop is sequential. The N-vector state lives in two small
  work arrays allocated once per job, never inside the time loop; matrix-vector
  products are written out as loops over contiguous rows.
* Work arrays take the output's dtype and accumulators start from a typed zero
  (``_zero``), so float32 stays float32 (no silent float64 promotion from Python
  literals) and complex stays complex.
* The backward recomputes each chunk's states from the forward's checkpoints into a
  (K + 1, N) buffer instead of storing all L states: residual memory is
  O(batch * N * L / K) plus one O(K * N) buffer per job.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange
from numba.core import types
from numba.extending import overload

from ...reference.lti import _checkpoint_interval, _scan_plan
from ._fpenv import fp_enter, fp_exit
from ._jit import jit

__all__ = [
    "control_readout",
    "diag_backward",
    "diag_final_state",
    "diag_kernel",
    "diag_recurrent",
    "simulate_backward",
    "simulate_recurrent",
    "simulate_scan",
]

# Below this many multiply-adds (~0.5 ms of work) a call runs serially: waking the
# thread pool costs ~10-50 us on a quiet machine and milliseconds on a loaded one.
_PARALLEL_MIN_WORK = 1 << 20


def _c(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x)  # a no-op for the front door's usual C-contiguous operands


def _dense_operands(A, B, C, D, u, x0, idx):
    return tuple(_c(a) for a in (A, B, C, D, u, x0, idx))


def _dense_outputs(A, C, u, idx, n_ck):
    nb, n, p, L = idx.shape[0], A.shape[1], C.shape[1], u.shape[2]
    dt = A.dtype
    return np.empty((nb, p, L), dt), np.empty((nb, n), dt), np.empty((nb, n_ck, n), dt)


def _use_parallel(jobs: int, work: int) -> bool:
    return jobs > 1 and work >= _PARALLEL_MIN_WORK and numba.get_num_threads() > 1


def _step_work(A, B, C) -> int:
    n, m, p = A.shape[1], B.shape[2], C.shape[1]
    return n * n + n * m + p * (n + m) + 1


@jit
def _zero(ref):
    # A typed zero of ref's dtype: a Python float literal would promote float32
    # arithmetic to float64 (and cost 2-20x in the hot loop).
    return ref.dtype.type(0)


# ------------------------------------------------------------------ time loops

# From this state size on, x <- A x is computed as a sum of columns of A (rows of a
# transposed copy): the inner loop then has no reduction and vectorises. Below it, the
# row-dot form is faster (measured: column form 1.4x faster at N = 16 and ~5x at
# N = 64; 2-3x slower at N = 4-8). The choice is made once per call, outside the
# time loop: a branch inside the step cost ~35% at N = 8.
_COLUMN_FORM_MIN_N = 16


@jit(inline="always")
def _step_rows(a, bm, ub, t, x, xn):
    """``x <- A x + B u_t``, row-dot form (xn is scratch)."""
    n = a.shape[0]
    m_in = bm.shape[1]
    zero = _zero(x)
    for i in range(n):
        acc = zero
        for m in range(m_in):
            acc += bm[i, m] * ub[m, t]
        for j in range(n):
            acc += a[i, j] * x[j]
        xn[i] = acc
    for i in range(n):
        x[i] = xn[i]


@jit(inline="always")
def _step_columns(at, bm, ub, t, x, xn):
    """``x <- A x + B u_t`` as a sum of the columns of A (``at`` = A^T, contiguous)."""
    n = at.shape[0]
    m_in = bm.shape[1]
    zero = _zero(x)
    for i in range(n):
        xn[i] = zero
    for m in range(m_in):
        um = ub[m, t]
        for i in range(n):
            xn[i] += bm[i, m] * um
    for j in range(n):
        xj = x[j]
        for i in range(n):
            xn[i] += at[j, i] * xj
    for i in range(n):
        x[i] = xn[i]


@jit(inline="always")
def _readout(c, d, ub, t, x, yb):
    """yb[:, t] = C x + D u_t."""
    n = c.shape[1]
    m_in = d.shape[1]
    zero = _zero(x)
    for p in range(c.shape[0]):
        acc = zero
        for i in range(n):
            acc += c[p, i] * x[i]
        for m in range(m_in):
            acc += d[p, m] * ub[m, t]
        yb[p, t] = acc


@jit(inline="always")
def _checkpoint(x, ckb, row):
    if row < ckb.shape[0]:
        for i in range(x.shape[0]):
            ckb[row, i] = x[i]


@jit
def _advance(a, bm, ub, x, xn, t0, t1):
    """``x`` <- state after steps t0..t1-1 of x_t = A x_{t-1} + B u_t (no outputs)."""
    if a.shape[0] < _COLUMN_FORM_MIN_N:
        for t in range(t0, t1):
            _step_rows(a, bm, ub, t, x, xn)
    else:
        at = np.ascontiguousarray(a.T)
        for t in range(t0, t1):
            _step_columns(at, bm, ub, t, x, xn)


@jit
def _advance_out(a, bm, c, d, ub, x, xn, t0, t1, yb, K, ckb, row0):
    """Like _advance, also writing the outputs and checkpoints.

    y_t = C x_t + D u_t goes into yb[:, t], and the state entering every K-th step into ckb[row0],
    ckb[row0 + 1], ... (rows permitting). A countdown instead of ``t % K`` keeps divisions out of
    the loop.
    """
    row = row0
    countdown = 0
    if a.shape[0] < _COLUMN_FORM_MIN_N:
        for t in range(t0, t1):
            if countdown == 0:
                _checkpoint(x, ckb, row)
                row += 1
                countdown = K
            countdown -= 1
            _step_rows(a, bm, ub, t, x, xn)
            _readout(c, d, ub, t, x, yb)
    else:
        at = np.ascontiguousarray(a.T)
        for t in range(t0, t1):
            if countdown == 0:
                _checkpoint(x, ckb, row)
                row += 1
                countdown = K
            countdown -= 1
            _step_columns(at, bm, ub, t, x, xn)
            _readout(c, d, ub, t, x, yb)


# ------------------------------------------------------------------ recurrent


@jit
def _recurrent_job(A, B, C, D, u, x0, idx, K, y, x_final, ck, b):
    n = A.shape[1]
    x = np.empty(n, dtype=y.dtype)
    xn = np.empty(n, dtype=y.dtype)
    for i in range(n):
        x[i] = x0[idx[b, 5], i]
    _advance_out(A[idx[b, 0]], B[idx[b, 1]], C[idx[b, 2]], D[idx[b, 3]], u[idx[b, 4]],
                 x, xn, 0, u.shape[2], y[b], K, ck[b], 0)
    for i in range(n):
        x_final[b, i] = x[i]


@jit
def _recurrent_serial(A, B, C, D, u, x0, idx, K, y, x_final, ck):
    fp0 = fp_enter()
    for b in range(idx.shape[0]):
        _recurrent_job(A, B, C, D, u, x0, idx, K, y, x_final, ck, b)
    fp_exit(fp0)


@jit(parallel=True)
def _recurrent_parallel(A, B, C, D, u, x0, idx, K, y, x_final, ck):
    for b in prange(idx.shape[0]):
        fp1 = fp_enter()
        _recurrent_job(A, B, C, D, u, x0, idx, K, y, x_final, ck, b)
        fp_exit(fp1)


def _recurrent_into(A, B, C, D, u, x0, idx, K, y, x_final, ck):
    nb = idx.shape[0]
    run = _recurrent_parallel if _use_parallel(nb, nb * u.shape[2] * _step_work(A, B, C)) else _recurrent_serial
    run(A, B, C, D, u, x0, idx, K, y, x_final, ck)


def simulate_recurrent(A, B, C, D, u, x0, idx, keep_checkpoints=False, K=None):
    """Sequential recurrence, parallel over the batch.

    With ``keep_checkpoints``, a checkpoint every K steps. Returns ``(y, x_final, ck, K)`` (see the
    reference).
    """
    A, B, C, D, u, x0, idx = _dense_operands(A, B, C, D, u, x0, idx)
    L = u.shape[2]
    if keep_checkpoints:
        K = _checkpoint_interval(L) if K is None else int(K)
        n_ck = -(-L // K)
    else:
        K, n_ck = max(L, 1), 0
    y, x_final, ck = _dense_outputs(A, C, u, idx, n_ck)
    _recurrent_into(A, B, C, D, u, x0, idx, K, y, x_final, ck)
    return (y, x_final, ck, K) if keep_checkpoints else (y, x_final, None, None)


# ------------------------------------------------------------------ scan


@jit
def _matmul_into(out, p, q):
    """``out = p @ q`` for small square matrices (no BLAS: works for every dtype)."""
    n = p.shape[0]
    zero = _zero(out)
    for i in range(n):
        for j in range(n):
            acc = zero
            for k in range(n):
                acc += p[i, k] * q[k, j]
            out[i, j] = acc


@jit
def _matrix_power(a, k, out):
    """``out = a^k`` by binary powering (k >= 0): O(N^3 log k), once per sequence."""
    n = a.shape[0]
    base = a.copy()
    tmp = np.empty_like(out)
    out[:] = 0
    for i in range(n):
        out[i, i] = 1
    while k > 0:
        if k & 1:
            _matmul_into(tmp, out, base)
            out[:] = tmp
        k >>= 1
        if k > 0:
            _matmul_into(tmp, base, base)
            base[:] = tmp


@jit
def _scan_local_job(A, B, C, D, u, x0, idx, K, y, ck, per_chunk, inner, job):
    """Pass 1: chunk c < n-1 of element b.

    Chunk 0 runs exactly from x0 (with outputs); the others compute their end state h_c from zero.
    The result is parked in the checkpoint row where chunk c + 1 enters.
    """
    b = job // inner
    ci = job % inner
    n = A.shape[1]
    S = K * per_chunk
    x = np.empty(n, dtype=y.dtype)
    xn = np.empty(n, dtype=y.dtype)
    t0 = ci * S
    if ci == 0:
        for i in range(n):
            x[i] = x0[idx[b, 5], i]
        _advance_out(A[idx[b, 0]], B[idx[b, 1]], C[idx[b, 2]], D[idx[b, 3]], u[idx[b, 4]],
                     x, xn, t0, t0 + S, y[b], K, ck[b], 0)
    else:
        x[:] = 0
        _advance(A[idx[b, 0]], B[idx[b, 1]], u[idx[b, 4]], x, xn, t0, t0 + S)
    for i in range(n):
        ck[b, (ci + 1) * per_chunk, i] = x[i]


@jit
def _scan_carry_job(A, idx, K, ck, per_chunk, n_chunks, b):
    """Carry: entering_c = A^S entering_{c-1} + h_{c-1} (entering_1 is already exact)."""
    n = A.shape[1]
    apk = np.empty((n, n), dtype=ck.dtype)
    _matrix_power(A[idx[b, 0]], K * per_chunk, apk)
    for ci in range(2, n_chunks):
        r = ci * per_chunk
        q = r - per_chunk
        for i in range(n):
            acc = ck[b, r, i]
            for j in range(n):
                acc += apk[i, j] * ck[b, q, j]
            ck[b, r, i] = acc


@jit
def _scan_output_job(A, B, C, D, u, x0, idx, K, y, x_final, ck, per_chunk, n_chunks, first, todo, job):
    """Pass 2: rerun chunk c >= first from its entering state, writing outputs and checkpoints."""
    b = job // todo
    ci = first + job % todo
    n = A.shape[1]
    S = K * per_chunk
    x = np.empty(n, dtype=y.dtype)
    xn = np.empty(n, dtype=y.dtype)
    for i in range(n):
        x[i] = x0[idx[b, 5], i] if ci == 0 else ck[b, ci * per_chunk, i]
    t0 = ci * S
    _advance_out(A[idx[b, 0]], B[idx[b, 1]], C[idx[b, 2]], D[idx[b, 3]], u[idx[b, 4]],
                 x, xn, t0, min(t0 + S, u.shape[2]), y[b], K, ck[b], ci * per_chunk)
    if ci == n_chunks - 1:
        for i in range(n):
            x_final[b, i] = x[i]


@jit
def _scan_serial(A, B, C, D, u, x0, idx, K, y, x_final, ck, per_chunk, n_chunks):
    fp0 = fp_enter()
    nb = idx.shape[0]
    inner = n_chunks - 1
    for job in range(nb * inner):
        _scan_local_job(A, B, C, D, u, x0, idx, K, y, ck, per_chunk, inner, job)
    if n_chunks > 2:
        for b in range(nb):
            _scan_carry_job(A, idx, K, ck, per_chunk, n_chunks, b)
    first = 1 if n_chunks > 1 else 0
    todo = n_chunks - first
    for job in range(nb * todo):
        _scan_output_job(A, B, C, D, u, x0, idx, K, y, x_final, ck, per_chunk, n_chunks, first, todo, job)
    fp_exit(fp0)


@jit(parallel=True)
def _scan_parallel(A, B, C, D, u, x0, idx, K, y, x_final, ck, per_chunk, n_chunks):
    nb = idx.shape[0]
    inner = n_chunks - 1
    for job in prange(nb * inner):
        fp1 = fp_enter()
        _scan_local_job(A, B, C, D, u, x0, idx, K, y, ck, per_chunk, inner, job)
        fp_exit(fp1)
    if n_chunks > 2:
        # serial: O(n_chunks N^2 + N^3 log S) per element, not worth a parallel region
        fp0 = fp_enter()  # closed before the next prange: a team never starts flushed (see _fpenv)
        for b in range(nb):
            _scan_carry_job(A, idx, K, ck, per_chunk, n_chunks, b)
        fp_exit(fp0)
    first = 1 if n_chunks > 1 else 0
    todo = n_chunks - first
    for job in prange(nb * todo):
        fp1 = fp_enter()
        _scan_output_job(A, B, C, D, u, x0, idx, K, y, x_final, ck, per_chunk, n_chunks, first, todo, job)
        fp_exit(fp1)


def simulate_scan(A, B, C, D, u, x0, idx, keep_checkpoints=False, K=None, per_chunk=None):
    """Chunked parallel-scan evaluation with chunks of S = K * per_chunk steps.

    Returns ``(y, x_final, ck, K)`` (see the reference). S is planned for
    ``numba.get_num_threads()`` threads (one chunk when the batch fills them);
    ``K``/``per_chunk`` given (tests) are honoured.
    ``ck`` (batch, ceil(L / K), N) is always allocated: it holds the checkpoints at
    interval K and doubles as the carry storage (chunk c enters at row c * per_chunk).

    Pass 1 (parallel over batch x chunks 0..n-2): chunk 0 runs exactly from x0 and
    writes its outputs; the other chunks compute their end state h_c from zero.
    Carry (parallel over batch): entering_c = A^S entering_{c-1} + h_{c-1}.
    Pass 2 (parallel over batch x chunks 1..n-1): rerun from the entering state,
    writing outputs and checkpoints.
    Work ~ 2 (n-1)/n of the recurrent kernel, spread over batch * (n-1) jobs.
    """
    A, B, C, D, u, x0, idx = _dense_operands(A, B, C, D, u, x0, idx)
    nb, L = idx.shape[0], u.shape[2]
    K, per_chunk = _scan_plan(L, nb, A.shape[1], numba.get_num_threads(), keep_checkpoints, K, per_chunk)
    y, x_final, ck = _dense_outputs(A, C, u, idx, -(-L // K))
    result = (y, x_final, ck, K) if keep_checkpoints else (y, x_final, None, None)
    x_final[...] = x0[idx[:, 5]]  # the answer for L == 0
    if L == 0 or nb == 0:
        return result
    S = K * per_chunk
    n_chunks = -(-L // S)
    if n_chunks == 1:  # one chunk is the recurrent loop (and the same checkpoints)
        _recurrent_into(A, B, C, D, u, x0, idx, K, y, x_final, ck)
        return result
    jobs = nb * (n_chunks - 1)
    run = _scan_parallel if _use_parallel(jobs, nb * L * _step_work(A, B, C)) else _scan_serial
    run(A, B, C, D, u, x0, idx, K, y, x_final, ck, per_chunk, n_chunks)
    return result


# ------------------------------------------------------------------ backward


@jit
def _backward_job(A, B, C, D, u, idx, K, ck, gy, g_final, gA, gB, gC, gD, gu, gx0, b):
    """Reverse-time adjoint recurrence for element b (see the reference).

    Chunks are visited last to first; each is recomputed from its checkpoint
    ck[b, c] into buf (K + 1, N), then walked backwards.
    """
    n = A.shape[1]
    m_in = B.shape[2]
    p_out = C.shape[1]
    L = u.shape[2]
    n_chunks = (L + K - 1) // K
    a = A[idx[b, 0]]
    bm = B[idx[b, 1]]
    c = C[idx[b, 2]]
    d = D[idx[b, 3]]
    ub = u[idx[b, 4]]
    g = gy[b]
    ga = gA[b]
    gb = gB[b]
    gc = gC[b]
    gd = gD[b]
    ga[:] = 0
    gb[:] = 0
    gc[:] = 0
    gd[:] = 0
    zero = _zero(ga)
    buf = np.empty((min(K, L) + 1, n), dtype=ga.dtype)
    x = np.empty(n, dtype=ga.dtype)
    xn = np.empty(n, dtype=ga.dtype)
    lam = np.empty(n, dtype=ga.dtype)
    r = np.empty(n, dtype=ga.dtype)  # A^T lambda_{t+1} (+ g_final at the end)
    for i in range(n):
        r[i] = g_final[b, i]
    for ci in range(n_chunks - 1, -1, -1):
        t0 = ci * K
        t1 = min(t0 + K, L)
        # recompute x_{t0-1} .. x_{t1-1} into buf[0 .. t1-t0]: the forward loop with a
        # checkpoint at every step and no outputs
        for i in range(n):
            x[i] = ck[b, ci, i]
        _advance_out(a, bm, c[:0], d[:0], ub, x, xn, t0, t1, g, 1, buf, 0)
        for i in range(n):
            buf[t1 - t0, i] = x[i]
        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            # lambda_t = C^T gy_t + r
            for i in range(n):
                acc = r[i]
                for p in range(p_out):
                    acc += c[p, i] * g[p, t]
                lam[i] = acc
            # gu_t = B^T lambda_t + D^T gy_t
            for m in range(m_in):
                acc = zero
                for i in range(n):
                    acc += bm[i, m] * lam[i]
                for p in range(p_out):
                    acc += d[p, m] * g[p, t]
                gu[b, m, t] = acc
            # parameter gradients: outer products, no conjugation
            for i in range(n):
                li = lam[i]
                for j in range(n):
                    ga[i, j] += li * buf[k, j]
                for m in range(m_in):
                    gb[i, m] += li * ub[m, t]
            for p in range(p_out):
                gp = g[p, t]
                for i in range(n):
                    gc[p, i] += gp * buf[k + 1, i]
                for m in range(m_in):
                    gd[p, m] += gp * ub[m, t]
            # r = A^T lambda_t, accumulated row by row so A is read contiguously
            for j in range(n):
                xn[j] = zero
            for i in range(n):
                li = lam[i]
                for j in range(n):
                    xn[j] += a[i, j] * li
            for j in range(n):
                r[j] = xn[j]
    for i in range(n):
        gx0[b, i] = r[i]


@jit
def _backward_serial(A, B, C, D, u, idx, K, ck, gy, g_final, gA, gB, gC, gD, gu, gx0):
    fp0 = fp_enter()
    for b in range(idx.shape[0]):
        _backward_job(A, B, C, D, u, idx, K, ck, gy, g_final, gA, gB, gC, gD, gu, gx0, b)
    fp_exit(fp0)


@jit(parallel=True)
def _backward_parallel(A, B, C, D, u, idx, K, ck, gy, g_final, gA, gB, gC, gD, gu, gx0):
    for b in prange(idx.shape[0]):
        fp1 = fp_enter()
        _backward_job(A, B, C, D, u, idx, K, ck, gy, g_final, gA, gB, gC, gD, gu, gx0, b)
        fp_exit(fp1)


def simulate_backward(A, B, C, D, u, idx, K, ck, gy, g_final):
    """Reverse-time adjoint recurrence, parallel over the batch.

    Returns ``(gA, gB, gC, gD, gu, gx0)`` per batch element (see the reference).
    """
    A, B, C, D, u, idx, ck, gy, g_final = (_c(a) for a in (A, B, C, D, u, idx, ck, gy, g_final))
    nb, n, m, p, L = idx.shape[0], A.shape[1], B.shape[2], C.shape[1], u.shape[2]
    dt = A.dtype
    grads = [np.zeros((nb,) + core, dtype=dt) for core in ((n, n), (n, m), (p, n), (p, m), (m, L), (n,))]
    if nb == 0:
        return tuple(grads)
    if L == 0:  # the adjoint is just the final-state cotangent
        grads[5][...] = g_final
        return tuple(grads)
    run = _backward_parallel if _use_parallel(nb, 3 * nb * L * _step_work(A, B, C)) else _backward_serial
    run(A, B, C, D, u, idx, K, ck, gy, g_final, *grads)
    return tuple(grads)


# ------------------------------------------------------------------ dlsim readout


def control_readout(x, u, C, D):
    """y[k] = C x[k] + D u[k] for time-first x (L, N), u (L, M): returns y (L, P)."""
    x, u, C, D = (_c(a) for a in (x, u, C, D))
    y = np.empty((x.shape[0], C.shape[0]), dtype=np.result_type(x, u, C, D))
    _control_readout(x, u, C, D, y)
    return y


@jit
def _control_readout(x, u, C, D, y):
    """y[k] = C x[k] + D u[k] for time-first x (L, N), u (L, M) into y (L, P).

    A plain loop rather than ``x @ C.T``: the product is tall and skinny, and a
    threaded BLAS call on it was ~20x slower than this on a loaded machine.
    """
    fp0 = fp_enter()
    n = x.shape[1]
    m_in = u.shape[1]
    p_out = C.shape[0]
    zero = _zero(y)
    for k in range(x.shape[0]):
        for p in range(p_out):
            acc = zero
            for i in range(n):
                acc += C[p, i] * x[k, i]
            for m in range(m_in):
                acc += D[p, m] * u[k, m]
            y[k, p] = acc
    fp_exit(fp0)



# ------------------------------------------------------------------ diagonal systems
#
# Rows r = (batch element, channel) are independent: A, B, C, x0 (R, N), D (R,),
# u (R, L). Every kernel is a prange over rows with the N-state in a small work
# array allocated once per row, never inside the time loop.


def _project(value, like):
    """``value`` as the dtype kind of ``like``: its real part when ``like`` is real."""
    raise NotImplementedError  # only called from jitted code (see the overload)


@overload(_project, inline="always")
def _project_overload(value, like):
    # Chosen at compile time from the output array's type, so the same loop writes
    # a real output (Re of the complex readout) or a complex one, branch-free.
    if isinstance(like, types.Complex):
        return lambda value, like: value
    return lambda value, like: value.real


@jit
def _diag_row(A, B, C, D, u, x0, scale, y, x_final, r):
    n = A.shape[1]
    L = u.shape[1]
    a = A[r]
    b = B[r]
    c = C[r]
    d = D[r]
    x = np.empty(n, dtype=x_final.dtype)
    for i in range(n):
        x[i] = x0[r, i]
    zero = _zero(x)
    for t in range(L):
        ut = u[r, t]
        acc = zero
        for i in range(n):
            xi = a[i] * x[i] + b[i] * ut
            x[i] = xi
            acc += c[i] * xi
        y[r, t] = _project(scale * acc, y[r, t]) + d * ut
    for i in range(n):
        x_final[r, i] = x[i]


@jit(parallel=True)
def _diag_recurrent_parallel(A, B, C, D, u, x0, scale, y, x_final):
    for r in prange(A.shape[0]):
        fp1 = fp_enter()
        _diag_row(A, B, C, D, u, x0, scale, y, x_final, r)
        fp_exit(fp1)


@jit
def _diag_recurrent_serial(A, B, C, D, u, x0, scale, y, x_final):
    fp0 = fp_enter()
    for r in range(A.shape[0]):
        _diag_row(A, B, C, D, u, x0, scale, y, x_final, r)
    fp_exit(fp0)


def _real(dt: np.dtype) -> np.dtype:
    return np.empty(0, dt).real.dtype


def diag_recurrent(A, B, C, D, u, x0, scale, real_output):
    """Fused diagonal recurrence + readout; returns ``(y, x_final)`` (see the reference)."""
    A, B, C, D, u, x0 = (_c(a) for a in (A, B, C, D, u, x0))
    R, L = u.shape
    y = np.empty((R, L), dtype=_real(A.dtype) if real_output else A.dtype)
    x_final = np.empty(A.shape, dtype=A.dtype)
    if R == 0:
        return y, x_final
    scale = x_final.dtype.type(scale)  # keep float32 arithmetic float32
    work = R * u.shape[1] * (A.shape[1] + 1)
    run = _diag_recurrent_parallel if _use_parallel(R, work) else _diag_recurrent_serial
    run(A, B, C, D, u, x0, scale, y, x_final)
    return y, x_final


@jit
def _diag_final_row(A, B, u, x0, x_final, r):
    n = A.shape[1]
    a = A[r]
    b = B[r]
    x = np.empty(n, dtype=x_final.dtype)
    for i in range(n):
        x[i] = x0[r, i]
    for t in range(u.shape[1]):
        ut = u[r, t]
        for i in range(n):
            x[i] = a[i] * x[i] + b[i] * ut
    for i in range(n):
        x_final[r, i] = x[i]


@jit(parallel=True)
def _diag_final_parallel(A, B, u, x0, x_final):
    for r in prange(A.shape[0]):
        fp1 = fp_enter()
        _diag_final_row(A, B, u, x0, x_final, r)
        fp_exit(fp1)


@jit
def _diag_final_serial(A, B, u, x0, x_final):
    fp0 = fp_enter()
    for r in range(A.shape[0]):
        _diag_final_row(A, B, u, x0, x_final, r)
    fp_exit(fp0)


def diag_final_state(A, B, u, x0):
    """x_final = A^L x0 + sum_t A^(L-1-t) B u_t (the recurrence without readout); returns x_final."""
    A, B, u, x0 = (_c(a) for a in (A, B, u, x0))
    R = A.shape[0]
    x_final = np.empty(A.shape, dtype=A.dtype)
    if R == 0:
        return x_final
    run = _diag_final_parallel if _use_parallel(R, R * u.shape[1] * A.shape[1]) else _diag_final_serial
    run(A, B, u, x0, x_final)
    return x_final


@jit
def _diag_kernel_row(A, W, scale, K, r):
    n = A.shape[1]
    a = A[r]
    p = np.empty(n, dtype=W.dtype)  # W_n A_n^l by running products
    for i in range(n):
        p[i] = W[r, i]
    zero = _zero(p)
    for l in range(K.shape[1]):
        acc = zero
        for i in range(n):
            acc += p[i]
            p[i] *= a[i]
        K[r, l] = _project(scale * acc, K[r, l])


@jit(parallel=True)
def _diag_kernel_parallel(A, W, scale, K):
    for r in prange(A.shape[0]):
        fp1 = fp_enter()
        _diag_kernel_row(A, W, scale, K, r)
        fp_exit(fp1)


@jit
def _diag_kernel_serial(A, W, scale, K):
    fp0 = fp_enter()
    for r in range(A.shape[0]):
        _diag_kernel_row(A, W, scale, K, r)
    fp_exit(fp0)


def diag_kernel(A, W, scale, L, real_output):
    """K[r, l] = scale * sum_n W[r, n] A[r, n]^l, l < L (real part when ``real_output``); returns K."""
    A, W = _c(A), _c(W)
    R = A.shape[0]
    K = np.empty((R, L), dtype=_real(W.dtype) if real_output else W.dtype)
    if R == 0:
        return K
    scale = W.dtype.type(scale)
    run = _diag_kernel_parallel if _use_parallel(R, R * L * A.shape[1]) else _diag_kernel_serial
    run(A, W, scale, K)
    return K


@jit
def _diag_backward_row(A, B, C, D, u, x0, scale, K, gy, g_final, gA, gB, gC, gD, gu, gx0, r):
    """Reverse diagonal recurrence for row r.

    States are recomputed from checkpoints every K steps (memory O(N (L / K + K))
    per row).
    """
    n = A.shape[1]
    L = u.shape[1]
    a = A[r]
    b = B[r]
    c = C[r]
    n_ck = (L + K - 1) // K
    ck = np.empty((max(n_ck, 1), n), dtype=gA.dtype)
    buf = np.empty((min(K, L) + 1, n), dtype=gA.dtype)
    x = np.empty(n, dtype=gA.dtype)
    lam = np.empty(n, dtype=gA.dtype)  # a * lambda_{t+1}, plus g_final at the end
    zero = _zero(x)
    for i in range(n):
        x[i] = x0[r, i]
    for ci in range(n_ck):
        for i in range(n):
            ck[ci, i] = x[i]
        for t in range(ci * K, min(ci * K + K, L)):
            ut = u[r, t]
            for i in range(n):
                x[i] = a[i] * x[i] + b[i] * ut
    for i in range(n):
        lam[i] = g_final[r, i]
        gA[r, i] = zero
        gB[r, i] = zero
        gC[r, i] = zero
    gd = zero
    for ci in range(n_ck - 1, -1, -1):
        t0 = ci * K
        t1 = min(t0 + K, L)
        for i in range(n):
            buf[0, i] = ck[ci, i]
        for t in range(t0, t1):
            ut = u[r, t]
            k = t - t0
            for i in range(n):
                buf[k + 1, i] = a[i] * buf[k, i] + b[i] * ut
        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            g = scale * gy[r, t]
            ut = u[r, t]
            acc = zero
            for i in range(n):
                li = g * c[i] + lam[i]  # lambda_t
                gC[r, i] += g * buf[k + 1, i]
                gA[r, i] += li * buf[k, i]
                gB[r, i] += li * ut
                acc += b[i] * li
                lam[i] = a[i] * li
            gu[r, t] = acc + D[r] * gy[r, t]
            gd += gy[r, t] * ut
    gD[r] = gd
    for i in range(n):
        gx0[r, i] = lam[i]


@jit(parallel=True)
def _diag_backward_parallel(A, B, C, D, u, x0, scale, K, gy, g_final, gA, gB, gC, gD, gu, gx0):
    for r in prange(A.shape[0]):
        fp1 = fp_enter()
        _diag_backward_row(A, B, C, D, u, x0, scale, K, gy, g_final, gA, gB, gC, gD, gu, gx0, r)
        fp_exit(fp1)


@jit
def _diag_backward_serial(A, B, C, D, u, x0, scale, K, gy, g_final, gA, gB, gC, gD, gu, gx0):
    fp0 = fp_enter()
    for r in range(A.shape[0]):
        _diag_backward_row(A, B, C, D, u, x0, scale, K, gy, g_final, gA, gB, gC, gD, gu, gx0, r)
    fp_exit(fp0)


def diag_backward(A, B, C, D, u, x0, scale, gy, g_final):
    """Adjoint of :func:`diag_recurrent`.

    Returns ``(gA, gB, gC, gD, gu, gx0)`` in ``A.dtype`` (see
    ``ssmcore.reference.lti.diag_backward``). States are recomputed
    from checkpoints every ``max(16, sqrt(L))`` steps per row.
    """
    A, B, C, D, u, x0, gy, g_final = (_c(a) for a in (A, B, C, D, u, x0, gy, g_final))
    R, L = u.shape
    ct = A.dtype
    grads = (np.empty((R, A.shape[1]), ct), np.empty((R, A.shape[1]), ct), np.empty((R, A.shape[1]), ct),
             np.empty(R, ct), np.empty((R, L), ct), np.empty((R, A.shape[1]), ct))  # fmt: skip
    if R == 0:
        return grads
    K = max(16, int(np.sqrt(max(L, 1))))
    scale = ct.type(scale)
    run = _diag_backward_parallel if _use_parallel(R, 3 * R * L * A.shape[1]) else _diag_backward_serial
    run(A, B, C, D, u, x0, scale, K, gy, g_final, *grads)
    return grads
