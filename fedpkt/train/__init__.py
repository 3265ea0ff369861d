"""Local training: what a client (or a centralized baseline) does to parameters.

- ``loop``: the one epoch loop (AdamW, linear warmup schedule, clipping, early stopping with the
  best state restored), the shared optimizer step, and the response-token loss.
- ``prefix_training``: ``train_prefix``, prefixes on the frozen backbone (phase 2, source prefix).
- ``inner_loop``: ``sgd_inner_steps`` / ``sgd_inner_steps_model``, Reptile's k SGD steps (phase 1).
- ``finetune``: ``finetune`` / ``trainable_copy``, full fine-tuning for the baselines.
"""
