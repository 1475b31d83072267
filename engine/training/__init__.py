"""Training VLKB's own dual encoder (captions, objective, model card). Torch only; the
qualification runtime never imports this package.
"""
