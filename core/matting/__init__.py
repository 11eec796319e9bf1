"""Alpha matting: trimaps from masks, classical alpha solvers (pymatting) and matte metrics.

Nothing heavy is imported here; pymatting is imported inside the solver's methods.
"""
