"""Model backends: loading CLIP, FLAVA and dual-encoder checkpoints, the embedding cache, and
which model plays which role. Only this package (and training) imports torch and transformers.
"""
