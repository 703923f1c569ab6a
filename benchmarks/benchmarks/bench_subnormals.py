"""Subnormal stalls (issue 15 item 1): realistic inputs vs subnormal-free inputs, flushing on/off.

Each case is one kernel on two inputs of the same size and work: ``realistic``
(decaying states, impulses, zero padding, cotangents at the last step only: the
values sink to subnormals and, with gradual underflow, stay there) and ``safe``
(values that never leave the normal range). On Intel cores every operation on a
subnormal takes a microcode assist, so with flushing off ``realistic`` runs up to
70x slower than ``safe``; with flushing on (ssmcore's default) the two must stay
within 1.3x. AMD Zen cores do not stall: there both ratios are ~1x and the
on/off difference on ``safe`` inputs is the cost of the mechanism itself.

asv: ``cd benchmarks && asv run --python=same --bench bench_subnormals``; the
side-by-side table (one process, interleaved) is ``benchmarks/compare_subnormals.py``.
``CASES`` (name -> builder) is shared by both.
"""

from __future__ import annotations

import numpy as np

import ssmcore

F32, F64, C64 = np.float32, np.float64, np.complex64


def _rng():
    return np.random.default_rng(0)


def _impulse(shape, dtype):
    x = np.zeros(shape, dtype)
    x[..., 0] = 1
    return x


def _last_step(shape, dtype):
    g = np.zeros(shape, dtype)
    g[..., -1] = 1
    return g


def _fwd_bwd(name, args, kw, ct):
    def run():
        _, pullback = ssmcore.vjp(name, *args, **kw)
        return pullback(ct)

    return run


# ----------------------------------------------------------------------------- cases
# builder(inputs, quick) -> a no-argument callable; "quick" shrinks channels/batch, not L,
# so the decay still reaches the subnormals.


def _scan_long(dtype, backward):
    def build(inputs, quick):
        rng = _rng()
        shape = (1, 1 << (18 if quick else 22))
        lo, hi = (0.9, 0.999) if inputs == "realistic" else (1 - 1e-4, 1 - 1e-5)  # chunk products stay normal
        a = rng.uniform(lo, hi, shape)
        b = rng.standard_normal(shape)
        if np.dtype(dtype).kind == "c":
            a, b = a * np.exp(0.05j), b + 1j * rng.standard_normal(shape)
        a, b = a.astype(dtype), b.astype(dtype)
        if backward:
            return _fwd_bwd("linear_scan", (a, b), {}, np.ones(shape, dtype))
        return lambda: ssmcore.linear_scan(a, b)

    return build


def _scan_impulse(backward):
    def build(inputs, quick):
        rng = _rng()
        shape = (128 if quick else 1024, 4096)
        a = rng.uniform(0.9, 0.999, shape).astype(F32)
        b = _impulse(shape, F32) if inputs == "realistic" else rng.standard_normal(shape).astype(F32)
        if backward:
            ct = _last_step(shape, F32) if inputs == "realistic" else rng.standard_normal(shape).astype(F32)
            return _fwd_bwd("linear_scan", (a, b), {}, ct)
        return lambda: ssmcore.linear_scan(a, b)

    return build


def _s4d_lin(mode, backward):
    def build(inputs, quick):
        rng = _rng()
        batch, H, N, L = (1, 32, 32, 4096) if quick else (8, 256, 32, 4096)
        hi = 1e-1 if inputs == "realistic" or mode != "convolution" else 1e-2  # conv: slower decay is the safe input
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(hi), (H, 1)))
        Ad, Bd = ssmcore.discretize_diag(np.tile(ssmcore.s4d_lin(2 * N), (H, 1)), np.ones((H, N)), dt)
        C = rng.standard_normal((H, N)) + 1j * rng.standard_normal((H, N))
        Ad, Bd, C = (x.astype(C64) for x in (Ad, Bd, C))
        D = rng.standard_normal(H).astype(F32)
        if mode == "convolution" or inputs == "safe":
            u = rng.standard_normal((batch, H, L)).astype(F32)
        else:
            u = _impulse((batch, H, L), F32)
        kw = dict(conj_sym=True, mode=mode)
        if backward:
            ct = _last_step((batch, H, L), F32) if inputs == "realistic" else rng.standard_normal(
                (batch, H, L)).astype(F32)
            return _fwd_bwd("lti_simulate_diag", (Ad, Bd, C, D, u), kw, ct)
        return lambda: ssmcore.lti_simulate_diag(Ad, Bd, C, D, u, **kw)

    return build


def _dense_lti(mode):
    def build(inputs, quick):
        rng = _rng()
        N, L = 8, 1 << (16 if quick else 18)
        A = rng.standard_normal((N, N))
        A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
        B, C, D = rng.standard_normal((N, 1)), rng.standard_normal((1, N)), rng.standard_normal((1, 1))
        A, B, C, D = (x.astype(F32) for x in (A, B, C, D))
        u = _impulse((1, 1, L), F32) if inputs == "realistic" else rng.standard_normal((1, 1, L)).astype(F32)
        return lambda: ssmcore.lti_simulate(A, B, C, D, u, mode=mode)

    return build


def _kernel_dense(backward):
    def build(inputs, quick):
        rng = _rng()
        S, N, L = (4 if quick else 16), 16, 16384
        A = rng.standard_normal((S, N, N))
        radius = 0.99 if inputs == "realistic" else 0.999  # 0.99^16384 ~ e^-165: below float32's e^-87
        A *= radius / np.abs(np.linalg.eigvals(A)).max(axis=1)[:, None, None]
        A, B, C = A.astype(F32), rng.standard_normal((S, N)).astype(F32), rng.standard_normal((S, N)).astype(F32)
        if backward:
            return _fwd_bwd("ssm_kernel_dense", (A, B, C, L), {}, rng.standard_normal((S, L)).astype(F32))
        return lambda: ssmcore.ssm_kernel_dense(A, B, C, L)

    return build


def _selective_scan(backward):
    def build(inputs, quick):
        rng = _rng()
        batch, Dm, L, N = (1, 64, 2048, 16) if quick else (2, 256, 2048, 16)
        A = -np.arange(1, N + 1, dtype=F32)[None, :].repeat(Dm, 0)
        u = rng.standard_normal((batch, Dm, L)).astype(F32)
        if inputs == "realistic":
            u[..., L // 2:] = 0  # a zero-padded batch: the state only decays in the second half
        delta = (0.5 * rng.random((batch, Dm, L))).astype(F32)
        B, C = rng.standard_normal((batch, N, L)).astype(F32), rng.standard_normal((batch, N, L)).astype(F32)
        kw = dict(D=rng.standard_normal(Dm).astype(F32), delta_bias=(rng.standard_normal(Dm) - 4).astype(F32),
                  delta_softplus=True)
        if backward:
            ct = _last_step(u.shape, F32) if inputs == "realistic" else rng.standard_normal(u.shape).astype(F32)
            return _fwd_bwd("selective_scan", (u, delta, A, B, C), kw, ct)
        return lambda: ssmcore.selective_scan(u, delta, A, B, C, **kw)

    return build


def _ssd(backward):
    def build(inputs, quick):
        rng = _rng()
        batch, L, H, P, G, N = (1, 2048, 4, 64, 1, 64) if quick else (1, 2048, 24, 64, 1, 64)
        x = rng.standard_normal((batch, L, H, P)).astype(F32)
        lo, hi = (0.02, 0.3) if inputs == "realistic" else (0.001, 0.005)
        dt = rng.uniform(lo, hi, (batch, L, H)).astype(F32)
        A = -np.exp(rng.uniform(0.0, np.log(16.0), H)).astype(F32)  # mamba's A_init_range (1, 16)
        B = rng.standard_normal((batch, L, G, N)).astype(F32)
        C = rng.standard_normal((batch, L, G, N)).astype(F32)
        kw = dict(chunk_size=64, D=np.ones(H, F32))
        if backward:
            return _fwd_bwd("ssd", (x, dt, A, B, C), kw, np.ones_like(x))
        return lambda: ssmcore.ssd(x, dt, A, B, C, **kw)

    return build


def _kernel_diag_real(L, backward):
    def build(inputs, quick):
        rng = _rng()
        H, N = (32 if quick else 256), 64
        A = np.broadcast_to(-(np.arange(N) + 1.0), (H, N)).astype(F32)  # S4D-Real
        B = np.ones((H, N), F32)
        C = rng.standard_normal((H, N)).astype(F32)
        lo, hi = (1e-3, 1e-1) if inputs == "realistic" else (1e-6, 1e-5)  # safe: (n + 1) dt L stays below ~80
        dt = np.exp(rng.uniform(np.log(lo), np.log(hi), H)).astype(F32)
        kw = dict(conj_sym=False)
        if backward:
            return _fwd_bwd("ssm_kernel_diag", (A, B, C, dt, L), kw, rng.standard_normal((H, L)).astype(F32))
        return lambda: ssmcore.ssm_kernel_diag(A, B, C, dt, L, **kw)

    return build


CASES = {
    "linear_scan (1, 2^22) f32 fwd": _scan_long(F32, False),
    "linear_scan (1, 2^22) f32 fwd+bwd": _scan_long(F32, True),
    "linear_scan (1, 2^22) f64 fwd": _scan_long(F64, False),
    "linear_scan (1, 2^22) f64 fwd+bwd": _scan_long(F64, True),
    "linear_scan (1, 2^22) c64 fwd": _scan_long(C64, False),
    "linear_scan (1, 2^22) c64 fwd+bwd": _scan_long(C64, True),
    "linear_scan (1024, 4096) f32 impulse fwd": _scan_impulse(False),
    "linear_scan (1024, 4096) f32 impulse fwd+bwd": _scan_impulse(True),
    "lti_simulate_diag S4D-Lin c64 convolution": _s4d_lin("convolution", False),
    "lti_simulate_diag S4D-Lin c64 convolution fwd+bwd": _s4d_lin("convolution", True),
    "lti_simulate_diag S4D-Lin c64 recurrent impulse": _s4d_lin("recurrent", False),
    "lti_simulate_diag S4D-Lin c64 scan impulse": _s4d_lin("scan", False),
    "lti_simulate_diag S4D-Lin c64 recurrent fwd+bwd": _s4d_lin("recurrent", True),
    "lti_simulate dense N8 2^18 f32 recurrent impulse": _dense_lti("recurrent"),
    "lti_simulate dense N8 2^18 f32 scan impulse": _dense_lti("scan"),
    "ssm_kernel_dense f32 L16384 rho 0.99": _kernel_dense(False),
    "ssm_kernel_dense f32 L16384 rho 0.99 fwd+bwd": _kernel_dense(True),
    "selective_scan (2,256,2048,16) f32 padded fwd": _selective_scan(False),
    "selective_scan (2,256,2048,16) f32 padded fwd+bwd": _selective_scan(True),
    "ssd f32 dt [0.02, 0.3] fwd": _ssd(False),
    "ssd f32 dt [0.02, 0.3] fwd+bwd": _ssd(True),
    "ssm_kernel_diag S4D-Real L4096": _kernel_diag_real(4096, False),
    "ssm_kernel_diag S4D-Real L16384": _kernel_diag_real(16384, False),
    "ssm_kernel_diag S4D-Real L16384 fwd+bwd": _kernel_diag_real(16384, True),
}


def with_flush(fn, enabled):
    """``fn`` run with ssmcore's subnormal flushing on or off (restored afterwards)."""
    from ssmcore.backends.numba._fpenv import flush_subnormals

    def run():
        with flush_subnormals(enabled):
            return fn()

    return run


class Subnormals:
    """Every case, realistic vs safe inputs, flushing on (the default) and off."""

    params = (list(CASES), ["realistic", "safe"], ["on", "off"])
    param_names = ["case", "inputs", "flush"]
    timeout = 600

    def setup(self, case, inputs, flush):
        self.run = with_flush(CASES[case](inputs, False), flush == "on")
        self.run()  # compile / load the kernels outside the timing

    def time_case(self, case, inputs, flush):
        self.run()
