"""Metrology of colour-segmented phase maps, and the generator of labelled synthetic maps."""
