"""Framework-free machinery shared by the PyTorch and JAX adapters.

``ssmcore.torch`` and ``ssmcore.jax`` turn every entry of the op registry
(:mod:`ssmcore.registry`) into a differentiable framework op with one generic
mechanism each. What they share lives here and imports neither framework:

* :mod:`ssmcore.adapters.plan` -- binding a call to the op's signature, splitting
  array inputs from options, encoding options as a string constant, generating
  a wrapper function with the op's exact signature, output flattening;
* :mod:`ssmcore.adapters.specs` -- per-op output shape/dtype rules (needed by
  ``torch.compile`` fake tensors and by JAX host calls), a probing
  fallback for ops without a rule, and small example inputs for every op.
"""

from __future__ import annotations

__all__: list[str] = []
