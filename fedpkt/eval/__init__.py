"""Evaluation: the paper's response-quality metrics and the C score of persona consistency.

- ``text_metrics``: F1, 2-gram F1, LCS F1 with ParlAI's normalisation (pure Python);
- ``consistency``: C score backends (the synthetic corpus's exact oracle, or an NLI model);
- ``scoring``: one persona's means, then the mean over personas.

Metric names everywhere: ``f1``, ``f1_2gram``, ``lcs_f1``, ``c_score``. Import from the modules
themselves; this package imports nothing, so text metrics never pull in torch/transformers.
"""
