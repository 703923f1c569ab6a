"""NumPy specification of the convolution-mode kernels (forward and backward).

Readable float64/complex128 code that materialises what the fast kernels avoid:
the Vandermonde matrix of powers, the Cauchy matrix, the sequence of states and
direct (not FFT) convolutions. ``ssmcore.backends.numba.convolution`` exposes the
same functions with the same signatures; the tests compare the two.

All functions take normalised, already-validated arrays (the front door
``ssmcore._convolution`` does the validation, broadcasting and discretisation).
Complex gradients follow the project's convention: the transpose of the
linearisation, no conjugation (JAX's).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cauchy_sums",
    "cauchy_sums_bwd",
    "causal_conv",
    "causal_conv_bwd",
    "conv_spectrum",
    "dense_kernel",
    "dense_kernel_bwd",
    "vandermonde_kernel",
    "vandermonde_kernel_bwd",
]


# --------------------------------------------------------------------------- diagonal


def _powers(log_ad: np.ndarray, L: int) -> np.ndarray:
    """Vandermonde matrix V[..., n, l] = Ad_n^l = exp(l log Ad_n), shape (..., N, L)."""
    ls = np.arange(L, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        V = np.exp(log_ad[..., None] * ls)
    V[..., :1] = 1.0  # Ad^0 = 1 even where Ad = 0 (log Ad = -inf gives 0 * -inf = nan)
    return V


def vandermonde_kernel(log_ad: np.ndarray, W: np.ndarray, L: int, out_dtype) -> np.ndarray:
    """K[c, h, l] = Re(sum_n W[c, h, n] Ad[h, n]^l) with Ad = exp(log_ad).

    log_ad : (H, N) complex, W : (C, H, N) complex (the factor 2 of conjugate
    symmetry is already folded into W). Returns K (C, H, L) of ``out_dtype``
    (a dtype or its name, e.g. ``"float32"``: the front door passes the name, which
    every array library understands; the launcher allocates).
    Materialises the (H, N, L) Vandermonde matrix.
    """
    V = _powers(np.asarray(log_ad, np.complex128), L)
    K = np.einsum("chn,hnl->chl", np.asarray(W, np.complex128), V).real
    return K.astype(out_dtype)


def vandermonde_kernel_bwd(log_ad: np.ndarray, W: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pullback of :func:`vandermonde_kernel` for a real cotangent G (C, H, L).

    Returns ``(W_bar, ad_bar)``: W_bar[c, h, n] = sum_l G[c, h, l] Ad^l and
    ad_bar[h, n] = sum_c W[c, h, n] sum_l G[c, h, l] l Ad^(l-1), both complex128
    (the cotangent of Ad itself, not of log Ad).
    """
    G = np.asarray(G, np.float64)
    L = G.shape[-1]
    V = _powers(np.asarray(log_ad, np.complex128), L)
    W_bar = np.einsum("chl,hnl->chn", G, V)
    # d(Ad^l)/dAd = l Ad^(l-1): shift the powers by one and weight by l.
    dV = np.zeros_like(V)
    if L > 1:
        dV[..., 1:] = np.arange(1, L) * V[..., :-1]
    ad_bar = np.einsum("chn,chl,hnl->hn", np.asarray(W, np.complex128), G, dV)
    return W_bar, ad_bar


# --------------------------------------------------------------------------- DPLR / Cauchy


def _denominators(mu: np.ndarray, one_minus_w: np.ndarray, one_plus_w: np.ndarray):
    """d[h, i, k] = (1 - w_k) - (1 + w_k) mu[h, i] and the same with conj(mu)."""
    a = one_minus_w[None, None, :]
    b = one_plus_w[None, None, :]
    d = a - b * mu[..., None]
    d_conj = a - b * np.conj(mu)[..., None]
    return d, d_conj


def cauchy_sums(num: np.ndarray, mu: np.ndarray, one_minus_w: np.ndarray, one_plus_w: np.ndarray) -> np.ndarray:
    """Conjugate-symmetric Cauchy sums at the frequency nodes.

    S[h, m, k] = sum_i num[h, m, i] / d[h, i, k] + conj(num[h, m, i]) / dc[h, i, k]
    with d = (1 - w_k) - (1 + w_k) mu[h, i] and dc the same with conj(mu): the
    second term is the conjugate half of every mode pair.

    num : (H, M, N) complex, mu : (H, N) complex, one_minus_w / one_plus_w : (F,)
    complex (1 - w_k and 1 + w_k for the nodes w_k). Returns S (H, M, F) complex128.
    """
    num = np.asarray(num, np.complex128)
    d, d_conj = _denominators(np.asarray(mu, np.complex128), one_minus_w, one_plus_w)
    return np.einsum("hmi,hik->hmk", num, 1.0 / d) + np.einsum("hmi,hik->hmk", np.conj(num), 1.0 / d_conj)


def cauchy_sums_bwd(
    num: np.ndarray, mu: np.ndarray, one_minus_w: np.ndarray, one_plus_w: np.ndarray, S_bar: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pullback of :func:`cauchy_sums`: returns ``(num_bar (H, M, N), mu_bar (H, N))``.

    The first term is holomorphic in (num, mu); the second depends on their
    conjugates, so its contribution is conjugated (JAX's convention).
    """
    num = np.asarray(num, np.complex128)
    S_bar = np.asarray(S_bar, np.complex128)
    d, d_conj = _denominators(np.asarray(mu, np.complex128), one_minus_w, one_plus_w)
    b = one_plus_w[None, None, :]
    num_bar = np.einsum("hmk,hik->hmi", S_bar, 1.0 / d) + np.conj(np.einsum("hmk,hik->hmi", S_bar, 1.0 / d_conj))
    # d(num/d)/dmu = num b / d^2 ; d(conj(num)/dc)/dconj(mu) = conj(num) b / dc^2
    Y = np.einsum("hmk,hik->hmi", S_bar, b / d**2) + np.conj(np.einsum("hmk,hik->hmi", S_bar, b / d_conj**2))
    mu_bar = np.einsum("hmi,hmi->hi", num, Y)
    return num_bar, mu_bar


# --------------------------------------------------------------------------- dense


def _dense_states(A: np.ndarray, B: np.ndarray, L: int) -> np.ndarray:
    """X[s, l] = A[s]^l B[s], shape (S, L, N)."""
    S, N = B.shape
    X = np.empty((S, L, N), dtype=np.result_type(A, B))
    x = B.copy()
    for l in range(L):
        X[:, l] = x
        x = np.einsum("sij,sj->si", A, x)
    return X


def dense_kernel(A: np.ndarray, B: np.ndarray, C: np.ndarray, L: int) -> np.ndarray:
    """K[s, l] = C[s] A[s]^l B[s] for stacked systems A (S, N, N), B (S, N), C (S, N)."""
    X = _dense_states(A, B, L)
    return np.einsum("sn,sln->sl", C, X)


def dense_kernel_bwd(A: np.ndarray, B: np.ndarray, C: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pullback of :func:`dense_kernel` for cotangent G (S, L).

    Adjoint states lam_l = C G_l + A^T lam_{l+1} (lam_L = 0); then
    B_bar = lam_0, C_bar = sum_l G_l x_l and A_bar = sum_l lam_{l+1} x_l^T.
    """
    S, L = G.shape
    X = _dense_states(A, B, L)
    dt = np.result_type(A, B, C, G)
    C_bar = np.einsum("sl,sln->sn", G, X).astype(dt)
    A_bar = np.zeros(A.shape, dtype=dt)
    lam = np.zeros(B.shape, dtype=dt)
    for l in range(L - 1, -1, -1):
        if l < L - 1:
            A_bar += lam[:, :, None] * X[:, l, None, :]
        lam = C * G[:, l, None] + np.einsum("sij,si->sj", A, lam)
    return A_bar, lam, C_bar


# --------------------------------------------------------------------------- convolution


def _empty_conv(u: np.ndarray, K: np.ndarray, D: np.ndarray | None) -> np.ndarray:
    """:func:`causal_conv` when L, L_k or the batch is 0: only the skip term D u remains."""
    Bt, H, L = u.shape
    y = np.zeros((Bt, K.shape[0], H, L), dtype=np.result_type(u, K))
    if D is not None:
        y += D[None, :, :, None] * u[:, None]
    return y


def _empty_conv_bwd(u, K, K_anti, D, G, need_u=True, need_k=True, need_d=True):
    """:func:`causal_conv_bwd` when L, L_k or the batch is 0 (no taps: only D contributes)."""
    u_bar = K_bar = Ka_bar = D_bar = None
    if need_u:
        u_bar = np.zeros(u.shape, dtype=np.result_type(u, G))
        if D is not None:
            u_bar += np.einsum("ch,bcht->bht", D, G)
    if need_k:
        K_bar = np.zeros_like(K)
        Ka_bar = None if K_anti is None else np.zeros_like(K_anti)
    if D is not None and need_d:
        D_bar = np.einsum("bcht,bht->ch", G, u)
    return u_bar, K_bar, Ka_bar, D_bar


def conv_spectrum(
    K: np.ndarray, K_anti: np.ndarray | None, L: int, workers: int | None = None
) -> tuple[np.ndarray, int]:
    """The spectrum of a kernel for inputs of up to ``L`` steps: ``(Kf, n)``.

    ``Kf`` (C, H, n // 2 + 1) is the real FFT of the length-n circular two-sided
    kernel k[m] = K[..., m] for m < Lk and k[n - 1 - j] = K_anti[..., j]; any
    ``n >= L + Lk`` leaves no wrap-around, and each backend picks its own fast n
    (here ``L + Lk``, at least 1). A backend's :func:`causal_conv` and
    :func:`causal_conv_bwd` accept its own ``(Kf, n)`` in place of transforming K
    on every call. ``workers`` is ignored.
    """
    C, H, Lk = K.shape
    n = max(1, int(L) + Lk)
    full = np.zeros((C, H, n))
    full[..., :Lk] = K
    if K_anti is not None and Lk:
        full[..., n - Lk :] = K_anti[..., ::-1]
    return np.fft.rfft(full, axis=-1), n


def causal_conv(
    u: np.ndarray,
    K: np.ndarray,
    K_anti: np.ndarray | None,
    D: np.ndarray | None,
    workers: int | None = None,
    Kf: np.ndarray | None = None,
    n: int | None = None,
) -> np.ndarray:
    """Direct (non-FFT) convolution, the specification of the FFT path.

    y[b, c, h, t] = sum_j K[c, h, j] u[b, h, t - j]
                    + sum_j K_anti[c, h, j] u[b, h, t + 1 + j]   (if K_anti given)
                    + D[c, h] u[b, h, t]                          (if D given)
    u (Bt, H, L) real; K, K_anti (C, H, Lk); D (C, H). ``workers`` is ignored, and so
    are ``Kf``, ``n`` (:func:`conv_spectrum`'s result, which FFT backends use instead
    of transforming K; K is always given too). Returns (Bt, C, H, L) float64. Any of
    L, Lk, Bt may be 0 (the launcher handles it: only the skip term remains).
    """
    Bt, H, L = u.shape
    C, _, Lk = K.shape
    if L == 0 or Lk == 0 or Bt == 0:
        return _empty_conv(u, K, D)
    y = np.zeros((Bt, C, H, L))
    for b in range(Bt):
        for c in range(C):
            for h in range(H):
                y[b, c, h] = np.convolve(u[b, h], K[c, h])[:L]
                if K_anti is not None:
                    for t in range(L):
                        m = min(Lk, L - 1 - t)
                        y[b, c, h, t] += np.dot(K_anti[c, h, :m], u[b, h, t + 1 : t + 1 + m])
                if D is not None:
                    y[b, c, h] += D[c, h] * u[b, h]
    return y


def causal_conv_bwd(
    u: np.ndarray,
    K: np.ndarray,
    K_anti: np.ndarray | None,
    D: np.ndarray | None,
    G: np.ndarray,
    workers: int | None = None,
    need_u: bool = True,
    need_k: bool = True,
    need_d: bool = True,
    Kf: np.ndarray | None = None,
    n: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Pullback of :func:`causal_conv` for cotangent G (Bt, C, H, L); ``need_*`` False -> that gradient is None.

    ``Kf``, ``n``: as in :func:`causal_conv` (ignored here).

    Correlations: u_bar[b, h, s] = sum_{c, j} K[c, h, j] G[b, c, h, s + j]
    (+ K_anti[c, h, j] G[b, c, h, s - 1 - j] + D[c, h] G[b, c, h, s]);
    K_bar[c, h, j] = sum_{b, t} G[b, c, h, t] u[b, h, t - j];
    K_anti_bar[c, h, j] = sum_{b, t} G[b, c, h, t] u[b, h, t + 1 + j];
    D_bar[c, h] = sum_{b, t} G[b, c, h, t] u[b, h, t]. All float64.
    """
    Bt, H, L = u.shape
    C, _, Lk = K.shape
    if L == 0 or Lk == 0 or Bt == 0:
        return _empty_conv_bwd(u, K, K_anti, D, G, need_u, need_k, need_d)
    u_bar = np.zeros((Bt, H, L))
    K_bar = np.zeros((C, H, Lk))
    Ka_bar = None if K_anti is None else np.zeros((C, H, Lk))
    for b in range(Bt):
        for c in range(C):
            for h in range(H):
                g = G[b, c, h]
                x = u[b, h]
                for j in range(Lk):
                    u_bar[b, h, : L - j] += K[c, h, j] * g[j:]
                    K_bar[c, h, j] += np.dot(g[j:], x[: L - j])
                    if K_anti is not None and j + 1 < L:
                        u_bar[b, h, j + 1 :] += K_anti[c, h, j] * g[: L - 1 - j]
                        Ka_bar[c, h, j] += np.dot(g[: L - 1 - j], x[j + 1 :])
                if D is not None:
                    u_bar[b, h] += D[c, h] * g
    D_bar = None if (D is None or not need_d) else np.einsum("bcht,bht->ch", G, u)
    if not need_k:
        K_bar = Ka_bar = None
    return (u_bar if need_u else None), K_bar, Ka_bar, D_bar
