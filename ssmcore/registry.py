"""The op registry: every differentiable op as a (forward, VJP) pair.

An op is registered once, next to its public function::

    @register_op("linear_scan", fwd=_linear_scan_fwd, bwd=_linear_scan_bwd,
                 inputs=("a", "b", "h0"))
    def linear_scan(a, b, h0=None, *, reverse=False, return_final_state=False): ...

* ``fwd(*args, **kwargs) -> (out, residuals)`` takes the public function's
  arguments and returns its output plus whatever the backward needs.
* ``bwd(residuals, cotangent) -> tuple`` returns one gradient per name in
  ``inputs`` (``None`` where an input was not given or is not differentiable),
  each of the input's own shape and dtype. ``cotangent`` has the structure of
  ``out``; entries the caller left as ``None`` arrive as zeros.
* Optionally ``bwd(residuals, cotangent, needs)``: a backward that can save work
  declares a third parameter named ``needs`` and receives one bool per name in
  ``inputs`` (PyTorch's ``ctx.needs_input_grad``); it may return ``None`` for
  every input whose flag is False. Backwards without it are called with two
  arguments, and :func:`vjp` drops the unwanted gradients.

Convention for complex numbers: the pullback is the transpose of the
(real-)linearisation under the pairing ``<u, v> = Re(sum(u * v))`` -- JAX's
convention, no conjugation. PyTorch's adapter conjugates on the way in and out.

:func:`vjp` turns any registered op into ``(out, pullback)`` without a framework;
the PyTorch and JAX adapters are generated from the same table.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _xp
from .dispatch import array_kind, declare_backends

__all__ = ["OpDef", "get_op", "list_ops", "register_op", "vjp"]


@dataclass(frozen=True)
class OpDef:
    """A registered op: public function plus its forward/backward pair."""

    name: str
    fn: Callable[..., Any]
    fwd: Callable[..., tuple[Any, Any]]
    bwd: Callable[[Any, Any], tuple[Any, ...]]
    inputs: tuple[str, ...]
    signature: inspect.Signature  # fn's, without NUMPY_ONLY_PARAMETERS
    bwd_takes_needs: bool = False  # bwd(res, ct, needs) can skip unwanted gradients
    backends: tuple[str, ...] = ("numpy", "numba")  # where fwd and bwd have kernels

    def backward(self, res: Any, cotangent: Any, needs: tuple[bool, ...] | None = None) -> tuple[Any, ...]:
        """Call ``bwd``; with ``needs``, gradients not wanted are ``None`` (skipped if ``bwd`` can)."""
        if needs is None:
            grads = self.bwd(res, cotangent)
        else:
            if len(needs) != len(self.inputs):
                raise ValueError(
                    f"pullback: needs has {len(needs)} entries; expected one per input {self.inputs} of {self.name}"
                )
            needs = tuple(bool(n) for n in needs)
            grads = self.bwd(res, cotangent, needs) if self.bwd_takes_needs else self.bwd(res, cotangent)
        if len(grads) != len(self.inputs):  # a bug in the op, not in the caller's input
            raise RuntimeError(f"{self.name}: backward returned {len(grads)} gradients for inputs {self.inputs}")
        if needs is not None:
            grads = tuple(g if n else None for g, n in zip(grads, needs))
        return tuple(grads)


_REGISTRY: dict[str, OpDef] = {}

#: Parameters of a public function that belong to the NumPy API only: ``out=`` (write
#: into a caller's buffer) has no meaning for a differentiable framework op, so it is
#: not part of the op's signature -- the adapters do not offer it, and ``fwd`` does not take it.
NUMPY_ONLY_PARAMETERS = ("out",)


def register_op(
    name: str,
    *,
    fwd: Callable[..., tuple[Any, Any]],
    bwd: Callable[[Any, Any], tuple[Any, ...]],
    inputs: tuple[str, ...],
    backends: tuple[str, ...] = ("numpy", "numba"),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering the public function ``fn`` as op ``name``.

    ``backends`` declares where the op's forward and backward have kernels
    (:func:`ssmcore.dispatch.declare_backends`); the dispatcher refuses the others
    with one uniform error.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in NUMPY_ONLY_PARAMETERS])
        missing = [n for n in inputs if n not in sig.parameters]
        if missing:
            raise TypeError(f"register_op: {name} lists inputs {missing} that {fn.__name__} does not take")
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"register_op: an op named {name!r} is already registered")
        takes_needs = "needs" in inspect.signature(bwd).parameters
        declare_backends(name, tuple(backends))
        _REGISTRY[name] = OpDef(name, fn, fwd, bwd, tuple(inputs), sig, takes_needs, tuple(backends))
        fn.__ssmcore_op__ = name
        return fn

    return deco


def get_op(op: str | Callable[..., Any]) -> OpDef:
    """Look up an op by name or by its public function.

    Parameters
    ----------
    op : str or callable
        The op's registered name (``"linear_scan"``) or its public function
        (``ssmcore.linear_scan``).

    Returns
    -------
    OpDef
        The registry entry: the op's name, signature, forward (with residuals)
        and backward functions.

    Raises
    ------
    ValueError
        If ``op`` is neither a registered name nor a registered public function;
        the message lists the registered ops.

    See Also
    --------
    list_ops : The names of all registered ops.
    vjp : Evaluate an op with its pullback.

    Examples
    --------
    >>> import ssmcore
    >>> ssmcore.get_op(ssmcore.linear_scan).name
    'linear_scan'
    >>> ssmcore.get_op("linear_scan") is ssmcore.get_op(ssmcore.linear_scan)
    True
    """
    key = getattr(op, "__ssmcore_op__", op)
    try:
        return _REGISTRY[key]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"get_op: {op!r} is not a registered ssmcore op; registered ops: {known}") from None


def list_ops() -> list[str]:
    """Names of all registered ops, sorted.

    Returns
    -------
    list of str
        The registered op names in alphabetical order; each is accepted by
        :func:`get_op` and :func:`vjp`.

    Raises
    ------
    None
        Listing the registry cannot fail.

    See Also
    --------
    get_op : The registry entry of one op.
    vjp : Evaluate an op with its pullback.

    Examples
    --------
    >>> import ssmcore
    >>> ops = ssmcore.list_ops()
    >>> "linear_scan" in ops and "selective_scan" in ops
    True
    >>> ops == sorted(ops)
    True
    """
    return sorted(_REGISTRY)


def _namespace_of(x: Any) -> Any:
    """The array namespace of an op output (NumPy for NumPy outputs)."""
    kind = array_kind(x)
    return _xp.namespace(kind) if kind in ("cupy", "strict") else None


def _zeros_for(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_zeros_for(e) for e in x)
    xp = _namespace_of(x)
    return np.zeros_like(x) if xp is None else xp.zeros_like(x)


def _fill_cotangent(out: Any, ct: Any, op: str = "pullback") -> Any:
    """Check the cotangent's structure against ``out`` and fill ``None`` with zeros.

    The cotangent is brought to the output's namespace and device (a NumPy or
    scalar cotangent of a CuPy output is moved to the GPU) and promoted with the
    output's dtype.
    """
    if ct is None:
        return _zeros_for(out)
    if isinstance(out, tuple):
        if not isinstance(ct, (tuple, list)) or len(ct) != len(out):
            raise ValueError(
                f"{op} pullback: the op returns a tuple of {len(out)} arrays; "
                f"pass a tuple of {len(out)} cotangents (None for zero)"
            )
        return tuple(_fill_cotangent(o, c, op) for o, c in zip(out, ct))
    xp = _namespace_of(out)
    if xp is None:
        c = np.asarray(ct)
        if c.shape != np.shape(out):
            raise ValueError(
                f"{op} pullback: cotangent has shape {c.shape}; expected the output's shape {np.shape(out)}"
            )
        return c.astype(np.result_type(c.dtype, np.asarray(out).dtype), copy=False)
    device = getattr(out, "device", None)
    c = ct if array_kind(ct) == array_kind(out) else xp.asarray(ct, device=device)
    if tuple(c.shape) != tuple(out.shape):
        raise ValueError(
            f"{op} pullback: cotangent has shape {tuple(c.shape)}; expected the output's shape {tuple(out.shape)}"
        )
    dt = xp.result_type(c.dtype, out.dtype)
    return c if c.dtype == dt else xp.astype(c, dt)


def vjp(op: str | Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Callable[[Any], tuple[Any, ...]]]:
    """Evaluate an op and return its output with a pullback (vector-Jacobian product).

    Parameters
    ----------
    op : str or callable
        A registered op, by name (``"discretize_diag"``) or public function
        (``ssmcore.discretize_diag``).
    *args, **kwargs
        The op's arguments, exactly as for the public function.

    Returns
    -------
    out : ndarray or tuple of ndarray
        What the public function returns.
    pullback : callable
        ``pullback(cotangent, needs=None)`` with ``cotangent`` shaped like
        ``out`` (a tuple for tuple outputs; ``None`` entries mean zero) returns a
        tuple with one gradient per array input of the op, in the op's argument
        order, ``None`` for inputs that were not given or are not
        differentiable. ``needs`` (one bool per input, in that order) asks for a
        subset: the others are ``None``, and ops whose backward separates (e.g.
        ``fft_conv``, ``linear_scan``) skip their work.

    Raises
    ------
    ValueError
        If ``op`` is not a registered op (from :func:`get_op`), if the op's own
        validation rejects the arguments, or, when the pullback is called, if the
        cotangent's structure or shape does not match ``out``.
    TypeError
        If the arguments do not match the op's signature (the message names the
        op), or the op's validation rejects an argument's type.

    See Also
    --------
    get_op : The registry entry (forward and backward) of an op.
    list_ops : The names of all registered ops.

    Examples
    --------
    >>> import numpy as np, ssmcore
    >>> lam = np.array([-1.0, -2.0]); B = np.ones(2)
    >>> (Ad, Bd), pullback = ssmcore.vjp("discretize_diag", lam, B, 0.1)
    >>> gA, gB, gdt = pullback((np.ones(2), None))
    >>> np.allclose(gA, 0.1 * np.exp(0.1 * lam))
    True
    >>> pullback((np.ones(2), None), needs=(False, True, False))[0] is None
    True
    """
    opdef = get_op(op)
    try:
        out, res = opdef.fwd(*args, **kwargs)
    except TypeError:
        # A call that does not match the op's signature: say so in the op's terms, not the
        # private forward's (``_linear_scan_fwd() missing 1 required positional argument``).
        try:
            opdef.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"vjp: {opdef.name}: {exc}") from None
        raise

    def pullback(cotangent: Any, needs: tuple[bool, ...] | None = None) -> tuple[Any, ...]:
        return opdef.backward(res, _fill_cotangent(out, cotangent, opdef.name), needs)

    return out, pullback
