"""Training: the Trainer loop, callbacks, LR schedules, checkpoints, fine-tuning and DDP."""
