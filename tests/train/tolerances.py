"""Tolerances derived from floating-point arithmetic, for tests that compare two runs adding the same terms in a
different order (data-parallel gradient averaging against gradient accumulation in one process)."""

import torch


def reordered_sum_tolerance(abs_sum: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
    """The most two floating-point sums of the same `count` terms can differ when added in different orders.

    `abs_sum` is the sum of the terms' magnitudes (elementwise: a tensor of them gives an elementwise bound).
    Any order or grouping (a loop over micro-batches, a ring or tree all-reduce) computes the sum in `dtype`
    within gamma_{count-1} * sum|terms| of the exact one, gamma_k = k*u / (1 - k*u), u = eps/2 the unit roundoff
    (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 4.4 and section 4.2); two orders differ
    by at most twice that, about (count - 1) * eps * sum|terms|.

    The bound holds only when the terms themselves are the same numbers in both runs, so a test must make each
    term with the same arithmetic (same batch, same intra-op thread count: a GEMM split over 2 threads adds its
    products in another order than over 1). For float32 and two terms it is 1.2e-7 of sum|terms|: a gradient that
    misses the 1/world_size average is off by 100% and fails it.
    """
    u = torch.finfo(dtype).eps / 2
    k = max(count - 1, 0)
    return (2 * k * u / (1 - k * u)) * abs_sum
