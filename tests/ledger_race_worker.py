"""One racer for the ledger race test: import everything, wait for the start file, reserve, print the outcome.

Usage: python ledger_race_worker.py URL DATASET RHO START_FILE
"""

from __future__ import annotations

import os
import sys
import time

from dpbeam.privacy.ledger import Ledger, LedgerBudgetError, _rho_for

url, dataset, rho, start = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
ledger = Ledger(url)
_rho_for(1.0, 1e-6)  # warm OpenDP up before the start, so the racers reach the database together
print("ready", flush=True)
while not os.path.exists(start):
    time.sleep(0.002)
try:
    r = ledger.reserve(dataset, "user_id", rho=rho, delta_approx=0.0, epsilon=0.5, delta=1e-6, spec_sha256="s" * 64)
    print("won", r.entry, flush=True)
except LedgerBudgetError as err:
    print("refused", err, flush=True)
