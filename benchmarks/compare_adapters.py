"""Adapter overhead: ``ssmcore.torch`` / ``ssmcore.jax`` against the direct NumPy call.

For every registered op, on its tiny example inputs (``ssmcore.adapters.specs.EXAMPLES``,
first case, float64), one process, candidates interleaved round-robin, medians:

* ``numpy``: the direct call ``ssmcore.<op>(...)`` on NumPy arrays (the baseline);
* ``torch``: ``ssmcore.torch.<op>`` on tensors without ``requires_grad``;
* ``hand``: the interop floor, written by hand: ``Tensor.numpy()`` per input, the NumPy call,
  ``torch.from_numpy`` per output (no checks, no autograd). Every call into torch slows the
  NumPy code after it a little (shared caches and branch predictors), so part of ``torch - numpy``
  is paid by any torch integration; ``torch - hand`` is what the adapter's own code adds;
* ``fwd``: the op's registered forward (output plus residuals for the backward; baseline of ``torch_rg``);
* ``torch_rg``: the same with ``requires_grad`` inputs (the autograd.Function path, forward only);
* ``hand_rg``: its floor, written by hand: a bare ``torch.autograd.Function`` whose forward
  converts as ``hand`` does, calls the op's ``fwd`` and keeps the residuals on ``ctx``;
* ``jax``: ``ssmcore.jax.<op>`` called eagerly; ``jax_jit``: the same inside ``jax.jit``
  (the pure_callback round trip);
* ``vjp``: ``ssmcore.vjp`` forward + pullback (baseline of the gradient rows);
* ``torch_fb``: torch forward + ``backward()``; ``hand_fb``: the same through the bare Function
  (its backward converts the cotangents, calls the op's ``bwd`` and wraps the gradients; real dtypes
  only, no checks); ``jax_grad``: ``jax.jit(jax.grad(...))``.

"+us" columns are the time added over the matching baseline, in microseconds. The
machine may be shared: compare columns of the same run, not runs.

Usage::

    python benchmarks/compare_adapters.py            # every op
    python benchmarks/compare_adapters.py --quick    # two ops, fewer rounds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import format_table, interleaved_medians  # noqa: E402

import ssmcore  # noqa: E402
from ssmcore.adapters import plan, specs  # noqa: E402


def _first_output(out):
    return out[0] if isinstance(out, tuple) else out


def candidates(op: str, torch, jax) -> dict:
    opdef = ssmcore.get_op(op)
    args, kw = specs.EXAMPLES[op][0][1](np.random.default_rng(0), np.float64)
    out = opdef.fn(*args, **kw)
    ct = tuple(np.ones_like(o) for o in out) if isinstance(out, tuple) else np.ones_like(out)

    def direct():
        return opdef.fn(*args, **kw)

    def core_vjp():
        _, pull = ssmcore.vjp(op, *args, **kw)
        return pull(ct)

    def core_fwd():
        return opdef.fwd(*args, **kw)

    cands = {"numpy": direct, "fwd": core_fwd, "vjp": core_vjp}
    if torch is not None:
        import ssmcore.torch as st

        tfn = getattr(st, op)
        conv = lambda v, rg: (torch.from_numpy(v.copy()).requires_grad_(rg and v.dtype.kind in "fc")  # noqa: E731
                              if isinstance(v, np.ndarray) else v)
        ta, tk = [conv(a, False) for a in args], {k: conv(v, False) for k, v in kw.items()}
        ga, gk = [conv(a, True) for a in args], {k: conv(v, True) for k, v in kw.items()}

        def torch_fb():
            o = tfn(*ga, **gk)
            o = o if isinstance(o, tuple) else (o,)
            torch.autograd.backward([x for x in o], [torch.ones_like(x) for x in o])

        def by_hand():  # the least any torch interop does: a view per tensor in, a tensor per array out
            o = opdef.fn(*[a.numpy() if isinstance(a, torch.Tensor) else a for a in ta],
                         **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in tk.items()})
            return [torch.from_numpy(x) for x in (o if isinstance(o, tuple) else (o,))]

        slots = [("a", i) for i, a in enumerate(ga) if isinstance(a, torch.Tensor)]
        slots += [("k", k) for k, v in gk.items() if isinstance(v, torch.Tensor)]
        names = list(opdef.signature.parameters)
        grad_index = [opdef.inputs.index(n) if n in opdef.inputs else None
                      for n in (names[i] if where == "a" else i for where, i in slots)]

        def fwd_of(arrays):
            a, k = list(ga), dict(gk)
            for (where, i), x in zip(slots, arrays):
                (a if where == "a" else k)[i] = x
            return opdef.fwd(*a, **k)

        class HandFunction(torch.autograd.Function):  # the least an autograd integration does
            @staticmethod
            def forward(ctx, *tensors):
                o, ctx.res = fwd_of([t.detach().numpy() for t in tensors])
                return tuple(torch.from_numpy(x) for x in (o if isinstance(o, tuple) else (o,)))

            @staticmethod
            def backward(ctx, *cts):
                g = opdef.backward(ctx.res, tuple(c.numpy() for c in cts) if len(cts) > 1 else cts[0].numpy())
                g = [None if k is None else g[k] for k in grad_index]
                return tuple(None if x is None else torch.from_numpy(np.ascontiguousarray(x)) for x in g)

        tensors = [ga[i] if where == "a" else gk[i] for where, i in slots]

        def hand_fb():
            o = HandFunction.apply(*tensors)
            torch.autograd.backward(list(o), [torch.ones_like(x) for x in o])

        cands.update(torch=lambda: tfn(*ta, **tk), hand=by_hand, torch_rg=lambda: tfn(*ga, **gk),
                     hand_rg=lambda: HandFunction.apply(*tensors), torch_fb=torch_fb,
                     hand_fb=hand_fb)
    if jax is not None:
        import jax.numpy as jnp

        import ssmcore.jax as sj

        jfn = getattr(sj, op)
        ja = [jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        jk = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        idx = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.dtype.kind in "fc"]

        def f(*xs):
            a = list(ja)
            for i, x in zip(idx, xs):
                a[i] = x
            return jfn(*a, **jk)

        leaves = [ja[i] for i in idx]
        jitted = jax.jit(f)

        def loss(*xs):
            o = f(*xs)
            return sum(jnp.sum(jnp.real(x)) for x in (o if isinstance(o, tuple) else (o,)))

        grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(leaves)))))
        cands.update(jax=lambda: jax.block_until_ready(f(*leaves)),
                     jax_jit=lambda: jax.block_until_ready(jitted(*leaves)),
                     jax_grad=lambda: jax.block_until_ready(grad(*leaves)))
    return cands


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two ops, fewer rounds")
    parser.add_argument("--ops", nargs="*", help="ops to time (default: all registered)")
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
    except ImportError:
        jax = None
    ops = args.ops or plan.load_all_ops()
    if args.quick and not args.ops:
        ops = [o for o in ("linear_scan", "discretize_diag") if o in ops] or ops[:2]
    rounds = 5 if args.quick else 11
    us = lambda t: f"{t * 1e6:.1f}"  # noqa: E731
    rows = []
    for op in ops:
        if op not in specs.EXAMPLES:
            print(f"# {op}: no example inputs, skipped")
            continue
        med = interleaved_medians(candidates(op, torch, jax), rounds=rounds, warmup=3,
                                  min_time=0.01 if args.quick else 0.05)
        row = [op, us(med["numpy"])]
        row += [us(med["hand"]), us(med["hand"] - med["numpy"])] if "hand" in med else ["-", "-"]
        for name in ("torch", "hand_rg", "torch_rg", "jax", "jax_jit"):
            base = med["fwd"] if name in ("torch_rg", "hand_rg") else med["numpy"]
            row += [us(med[name]), us(med[name] - base)] if name in med else ["-", "-"]
        row.append(us(med["vjp"]))
        for name in ("hand_fb", "torch_fb", "jax_grad"):
            row += [us(med[name]), us(med[name] - med["vjp"])] if name in med else ["-", "-"]
        rows.append(row)
    header = ["op", "numpy", "hand", "+us", "torch", "+us", "hand_rg", "+us", "torch_rg", "+us",
              "jax", "+us", "jax_jit", "+us", "vjp", "hand_fb", "+us", "torch_fb", "+us", "jax_grad", "+us"]
    print("median microseconds per call (tiny example inputs, float64; "
          "+us = added over numpy (torch_rg: over the core's fwd) / over vjp)")
    print(format_table(rows, header))


if __name__ == "__main__":
    main()
