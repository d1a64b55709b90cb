"""Risk models behind one interface (``fit`` + ``decision_function``, higher = riskier).

Only the modules of this package import pyod and lightgbm.
"""
