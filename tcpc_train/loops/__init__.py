"""The training loops (pretraining, fine-tuning, evaluation) and what they share: runtime, checkpoints."""
