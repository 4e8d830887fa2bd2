"""rsrs.core: what every layer shares -- the error hierarchy, strict schemas with one-line errors, atomic writes.

It imports nothing of rsrs and nothing heavy (no torch, no GDAL), so any layer, and the CLI before it knows
what it will run, can use it.
"""
