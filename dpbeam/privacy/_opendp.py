"""The one place that imports OpenDP and enables its "contrib" features.

Every other module gets OpenDP from here (``from dpbeam.privacy._opendp import dp``), so the feature switch is
flipped exactly once and nobody enables more than contrib (in particular never "honest-but-curious" or
"floating-point" shortcuts).
"""

import opendp.prelude as dp

dp.enable_features("contrib")

__all__ = ["dp"]
