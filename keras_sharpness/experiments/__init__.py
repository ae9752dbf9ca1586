"""The paper's experiments as commands (Section 2-3 of Keskar et al.).

========================================  ==========================================
command                                   what it reproduces
========================================  ==========================================
``python -m keras_sharpness.experiments.trials``       Tables 2, 3 and 4 (N trials)
``python -m keras_sharpness.experiments.batch_sweep``  Figure 4 (accuracy, sharpness vs batch)
``python -m keras_sharpness.experiments.warm_start``   Figure 5 (LB warm-started from SB)
``python -m keras_sharpness.experiments.trajectory``   Figure 6 (sharpness vs cross-entropy)
========================================  ==========================================

Each writes JSON and a figure (PDF + PNG) under its ``--workdir`` and reuses
finished work when run again with the same flags.
"""
