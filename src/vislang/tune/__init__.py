"""Tuning: k-fold cross-validation (:mod:`vislang.tune.cv`) and Optuna sweeps (:mod:`vislang.tune.sweep`)."""
