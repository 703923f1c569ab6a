"""``pullback(ct, needs=...)``: a subset of the gradients, equal to the full pullback's entries.

Every registered op, on the adapter example inputs (``ssmcore.adapters.specs.EXAMPLES``):
asking for one gradient at a time gives exactly that gradient of the full
pullback and None for the others, whether or not the op's backward can skip work.
"""

from __future__ import annotations

import numpy as np
import pytest

import ssmcore
from ssmcore.adapters import plan, specs

OPS = plan.load_all_ops()
CASES = [pytest.param(op, make, id=f"{op}-{case}") for op in OPS for case, make in specs.EXAMPLES.get(op, [])[:1]]


def _cotangent(out, rng):
    def one(o):
        o = np.asarray(o)
        c = rng.standard_normal(o.shape)
        return (c + 1j * rng.standard_normal(o.shape)) if o.dtype.kind == "c" else c

    return tuple(one(o) for o in out) if isinstance(out, tuple) else one(out)


@pytest.mark.parametrize("op, make", CASES)
def test_each_gradient_alone_equals_the_full_pullback(op, make):
    rng = np.random.default_rng(1)
    args, kw = make(rng, np.float64)
    opdef = ssmcore.get_op(op)
    out, pullback = ssmcore.vjp(op, *args, **kw)
    ct = _cotangent(out, rng)
    full = pullback(ct)
    n = len(opdef.inputs)
    assert pullback(ct, needs=(False,) * n) == (None,) * n
    for i in range(n):
        needs = tuple(j == i for j in range(n))
        got = pullback(ct, needs=needs)
        assert all(g is None for j, g in enumerate(got) if j != i)
        if full[i] is None:
            assert got[i] is None
        else:
            np.testing.assert_allclose(got[i], full[i], rtol=1e-13, atol=1e-13, err_msg=f"{op}: {opdef.inputs[i]}")


def test_needs_of_the_wrong_length():
    _, pullback = ssmcore.vjp("linear_scan", np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=r"pullback: needs has 2 entries; expected one per input \('a', 'b', 'h0'\)"):
        pullback(np.ones(3), needs=(True, True))


def test_separable_backwards_declare_needs():
    """The ops whose backward skips unneeded gradients (documented in docs/gradients.md)."""
    assert ssmcore.get_op("fft_conv").bwd_takes_needs
    assert ssmcore.get_op("linear_scan").bwd_takes_needs


def test_torch_passes_needs_input_grad_to_the_core(monkeypatch):
    """A first layer's input needs no gradient: fft_conv's backward must not compute it."""
    torch = pytest.importorskip("torch")
    import ssmcore.torch as st
    from ssmcore.backends.numba import convolution as nbconv

    seen = []
    real = nbconv.causal_conv_bwd

    def spy(*args):
        seen.append(args[6:9])  # (u, K, K_anti, D, G, workers, need_u, need_k, need_d, Kf, n)
        return real(*args)

    monkeypatch.setattr(nbconv, "causal_conv_bwd", spy)
    rng = np.random.default_rng(0)
    u = torch.tensor(rng.standard_normal((2, 3, 64)))  # data: no gradient
    K = torch.tensor(rng.standard_normal((3, 16)), requires_grad=True)
    D = torch.tensor(rng.standard_normal(3), requires_grad=True)
    st.fft_conv(u, K, D).sum().backward()
    assert seen == [(False, True, True)]
    expected = ssmcore.vjp("fft_conv", u.numpy(), K.detach().numpy(), D.detach().numpy())[1](np.ones((2, 3, 64)))
    np.testing.assert_allclose(K.grad.numpy(), expected[1], rtol=1e-12)
    np.testing.assert_allclose(D.grad.numpy(), expected[2], rtol=1e-12)


@pytest.mark.parametrize("path", ["serial", "channels", "chunked"])
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
@pytest.mark.parametrize("const_a", [False, True])
def test_linear_scan_kernel_without_a_gradient(path, dtype, const_a):
    """need_a=False: ga is None; g and gh0 are bit-identical to the full backward's."""
    from ssmcore.backends.numba import scan as nbscan

    rng = np.random.default_rng(2)
    C, L = 5, 3000
    a = rng.uniform(0.5, 1.0, (C, 1 if const_a else L)).astype(dtype)
    b, gh = (rng.standard_normal((C, L)).astype(dtype) for _ in range(2))
    arow, h0, gf = np.arange(C), rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    for reverse in (False, True):
        h = nbscan.scan_fwd(a, arow, b, h0, reverse, path=path)
        g, ga, gh0 = nbscan.scan_bwd(a, arow, h, h0, gh, gf, reverse, path=path)
        g2, ga2, gh02 = nbscan.scan_bwd(a, arow, h, h0, gh, gf, reverse, path=path, need_a=False)
        assert ga2 is None and ga is not None
        np.testing.assert_array_equal(g2, g)
        np.testing.assert_array_equal(gh02, gh0)
