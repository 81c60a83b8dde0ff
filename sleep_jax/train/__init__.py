"""Training system: config validation, optimiser, sharded train step, checkpoints, metrics,
evaluation, the train/eval programs behind ``sleep_jax.main``, and the sweep helper.

Modules: ``config`` (blocks, TrainConfig, validation, the run's config.json), ``errors``
(ConfigError, RunStopped), ``optimizer`` (Muon/AdamW), ``step`` (jitted steps),
``data`` (task batches -> global arrays), ``checkpoint`` (orbax), ``metrics`` (jsonl,
TensorBoard, progress), ``evaluation`` (eval.json + PNG), ``loop`` (train / evaluate_checkpoint),
``sweep`` (grid -> commands).
"""
