"""Layers and initialisers: the counterparts of brainstate's layers used in the
collective-operations tutorial."""
