"""Evaluation for the data owner: fidelity, utility, fairness, empirical privacy, a mechanism audit, an HTML report.

Everything here except the mechanism audit compares with the real data, so it is NOT differentially private: its
results are for the data owner on the trusted side and are never part of a release.
"""
