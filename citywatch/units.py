"""Units that devices send, and the conversions citywatch applies to reach the registry's unit.

Devices name units in different ways (UCUM "ug/m3", UN/CEFACT common codes "GQ" as FIWARE's
`unitCode` does, "µg/m³"). Each alias maps to one canonical spelling; a reading whose unit is
neither the registry's unit nor linearly convertible to it is rejected as "wrong unit".
"""

from __future__ import annotations

CANONICAL_ALIASES: dict[str, tuple[str, ...]] = {
    "ug/m3": ("µg/m3", "μg/m3", "µg/m³", "μg/m³", "ug/m³", "ugm3", "GQ"),
    "mg/m3": ("mg/m³", "GP"),
    "mg/L": ("mg/l", "M1"),
    "ug/L": ("µg/L", "μg/L", "ug/l"),
    "MPN/100mL": ("MPN/100 mL", "MPN/100ml", "CFU/100mL", "CFU/100 mL"),
    "Cel": ("°C", "degC", "C", "CEL", "celsius"),
    "degF": ("°F", "F", "FAH", "fahrenheit"),
    "%": ("percent", "P1"),
    "1": ("ratio", "fraction", "C62"),
    "pH": ("ph",),
    "NTU": ("ntu", "FNU"),
    "uS/cm": ("µS/cm", "μS/cm", "us/cm"),
    "mS/cm": ("ms/cm",),
    "veh": ("vehicles", "vehicle", "count", "E50"),
    "km/h": ("kmh", "km/hr", "KMH"),
    "m/s": ("MTS",),
    "mm": ("MMT",),
    "hPa": ("hpa", "mbar", "A97"),
    "m": ("MTR",),
    "V": ("VLT",),
    "mV": ("mv", "2Z"),
    "Pa": ("pa", "PAL"),
    "kPa": ("kpa", "KPA"),
}

_ALIAS_TO_CANONICAL = {alias: canon for canon, aliases in CANONICAL_ALIASES.items() for alias in aliases}
_ALIAS_TO_CANONICAL.update({canon: canon for canon in CANONICAL_ALIASES})

# (from, to) -> (scale, offset): to_value = from_value * scale + offset
CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("mg/m3", "ug/m3"): (1000.0, 0.0),
    ("ug/m3", "mg/m3"): (0.001, 0.0),
    ("ug/L", "mg/L"): (0.001, 0.0),
    ("mg/L", "ug/L"): (1000.0, 0.0),
    ("degF", "Cel"): (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("%", "1"): (0.01, 0.0),
    ("1", "%"): (100.0, 0.0),
    ("mS/cm", "uS/cm"): (1000.0, 0.0),
    ("uS/cm", "mS/cm"): (0.001, 0.0),
    ("m/s", "km/h"): (3.6, 0.0),
    ("km/h", "m/s"): (1 / 3.6, 0.0),
    ("mV", "V"): (0.001, 0.0),
    ("V", "mV"): (1000.0, 0.0),
    ("Pa", "hPa"): (0.01, 0.0),
    ("kPa", "hPa"): (10.0, 0.0),
    ("hPa", "Pa"): (100.0, 0.0),
}


def canonical_unit(unit: str) -> str | None:
    """The canonical spelling of a unit, or None when citywatch does not know it."""
    return _ALIAS_TO_CANONICAL.get(unit.strip())


def conversion(from_unit: str, to_unit: str) -> tuple[float, float] | None:
    """(scale, offset) turning a value in `from_unit` into `to_unit`, or None if not convertible."""
    src, dst = canonical_unit(from_unit), canonical_unit(to_unit)
    if src is None or dst is None:
        return None
    if src == dst:
        return (1.0, 0.0)
    return CONVERSIONS.get((src, dst))
