"""Deprecated (kept for one release): `GraphedCall` moved to `omnivox.pipelines.runtime` (the pipelines' run-time
state, beside `RunContext`)."""

import warnings

from omnivox.pipelines.runtime import GraphedCall  # noqa: F401

warnings.warn("omnivox.models.cuda_graphs moved to omnivox.pipelines.runtime", DeprecationWarning, stacklevel=2)
