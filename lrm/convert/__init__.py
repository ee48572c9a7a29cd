"""Importers that turn other projects' checkpoints into this project's checkpoint folders."""
