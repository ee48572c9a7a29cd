"""Training: ``lrm.training.trainer.main`` is what ``train.py`` runs (docs/training.md)."""
