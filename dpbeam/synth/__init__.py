"""Synthesis: post-processing only. Reads a measurements artifact, fits a model, writes rows.

Nothing in this package reads the source or imports anything that does (a test checks the imports), so it can run
outside the trusted boundary, on a GPU pool or in another project.
"""
