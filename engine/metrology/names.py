"""How a person names each quantity in a sentence ("HAZ depth", not "haz depth mm"); the unit
belongs to the value, so it is never part of the name."""

from __future__ import annotations

QUANTITY_NAMES: dict[str, str] = {
    "bead_area_mm2": "bead area",
    "reinforcement_area_mm2": "reinforcement area",
    "reinforcement_height_mm": "reinforcement height",
    "dilution_fraction": "dilution",
    "haz_depth_mm": "HAZ depth",
    "porosity_fraction": "porosity",
    "max_pore_diameter_um": "largest pore diameter",
    "pore_count": "pore count",
    "carbide_fraction": "carbide fraction",
    "carbide_cv": "carbide coefficient of variation",
    "carbide_cv_fine": "carbide coefficient of variation in 0.125 mm squares",
    "carbide_cv_ratio": "carbide CV ratio between 0.25 and 0.125 mm squares",
    "carbide_gradient": "carbide top-to-bottom gradient",
    "carbide_clustering": "carbide clustering",
}
UNIT_SUFFIXES = ("_mm2", "_um2", "_mm", "_um", "_fraction")


def quantity_name(quantity: str) -> str:
    """The sentence name of a quantity; one VLKB does not know loses its unit suffix."""
    if quantity in QUANTITY_NAMES:
        return QUANTITY_NAMES[quantity]
    for suffix in UNIT_SUFFIXES:
        quantity = quantity.removesuffix(suffix)
    return quantity.replace("_", " ")
