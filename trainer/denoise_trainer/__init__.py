"""Trainer: catalog scan, datasets, CycleGAN training, evaluation and synthetic LD/HD data."""
