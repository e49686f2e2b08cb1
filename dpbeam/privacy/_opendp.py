"""The one place that imports OpenDP and enables its "contrib" features.

Every other module gets OpenDP from here (``from dpbeam.privacy._opendp import dp``), so the feature switch is
flipped exactly once and nobody enables more than contrib (in particular never "honest-but-curious" or
"floating-point" shortcuts).

``dp`` offers what ``opendp.prelude`` does for the core library (the names of ``opendp.mod``, ``domains``,
``metrics``, ``measures`` and ``typing``; ``dp.m``, ``dp.c``, ``dp.t``) without the prelude's ``opendp.extras``,
whose import pulls in scikit-learn, SciPy and pandas (seconds of CPU on every run, for nothing dpbeam calls).
"""

import types

import opendp.combinators as _c
import opendp.measurements as _m
import opendp.transformations as _t
from opendp import domains as _domains
from opendp import measures as _measures
from opendp import metrics as _metrics
from opendp import mod as _mod
from opendp import typing as _typing

dp = types.SimpleNamespace(
    **{name: getattr(module, name)
       for module in (_mod, _domains, _metrics, _measures, _typing)
       for name in getattr(module, "__all__", [n for n in dir(module) if not n.startswith("_")])},
    m=_m, c=_c, t=_t,
)

dp.enable_features("contrib")

__all__ = ["dp"]
