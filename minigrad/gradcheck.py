"""gradcheck: compare autograd's gradients with central finite differences, in float64."""
from __future__ import annotations

import numpy as np

from .dtype import float64


class GradcheckError(AssertionError):
    pass


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True) -> bool:
    """`fn(*inputs)` returns a Tensor (or a tuple of them). Float inputs that require
    grad are copied to float64 on the CPU, the outputs are contracted with a fixed
    random weight to a scalar, and d(scalar)/d(input) from `backward()` is compared
    elementwise with (f(x + eps) - f(x - eps)) / (2 eps):
    |analytic - numeric| <= atol + rtol * |numeric|."""
    from .tensor import Tensor
    inputs = [x if isinstance(x, Tensor) else x for x in
              (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    wrt = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not wrt:
        raise ValueError("gradcheck: no input has requires_grad=True")
    base = [x.numpy().astype(np.float64) if i in wrt else x for i, x in enumerate(inputs)]
    rng = np.random.default_rng(0)
    weights = []

    def scalar(arrays, track=False):
        args = [Tensor(a, dtype=float64, device="cpu", requires_grad=track)
                if i in wrt else a for i, a in enumerate(arrays)]
        outs = fn(*args)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        if not weights:
            weights.extend(rng.standard_normal(o.shape) for o in outs)
        total = sum((o.cast(float64) * Tensor(w, dtype=float64, device="cpu")).sum()
                    for o, w in zip(outs, weights))
        return total, args

    total, args = scalar(base, track=True)
    total.backward()
    for i in wrt:
        grad = args[i].grad
        analytic = np.zeros_like(base[i]) if grad is None else grad.numpy()
        numeric = np.zeros_like(base[i])
        flat = base[i].reshape(-1)
        for j in range(flat.size):
            orig = flat[j]
            flat[j] = orig + eps
            plus = scalar(base)[0].item()
            flat[j] = orig - eps
            minus = scalar(base)[0].item()
            flat[j] = orig
            numeric.reshape(-1)[j] = (plus - minus) / (2 * eps)
        bad = ~(np.abs(analytic - numeric) <= atol + rtol * np.abs(numeric))
        if bad.any():
            if not raise_exception:
                return False
            k = np.flatnonzero(bad)[0]
            raise GradcheckError(
                f"gradcheck: input {i} (shape {base[i].shape}): {bad.sum()} of {bad.size} "
                f"elements differ; first at flat index {k}: analytic "
                f"{analytic.reshape(-1)[k]:.8g}, numeric {numeric.reshape(-1)[k]:.8g}")
    return True
