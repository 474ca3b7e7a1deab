"""The 15 soft-biometric attributes of AG-VPReID and the code that means "unknown" for each.

METHOD §1: the attribute CSVs hold one row per person id, column ``id`` then these 15 columns in
this order. Codes are small non-negative integers; ``UNKNOWN_CODE[name]`` marks a value the
annotators could not tell. A person id missing from a CSV is unknown for every attribute.
"""
from __future__ import annotations

# name -> the code meaning "unknown" (the largest code of each attribute)
UNKNOWN_CODE: dict[str, int] = {
    "gender": 2,
    "age": 8,
    "height": 4,
    "body_volume": 3,
    "ethnicity": 4,
    "hair_color": 6,
    "hairstyle": 5,
    "beard": 2,
    "moustache": 2,
    "glasses": 3,
    "head_accessories": 4,
    "upper_clothing": 12,
    "lower_clothing": 9,
    "feet": 6,
    "accessories": 8,
}
ATTRIBUTES: tuple[str, ...] = tuple(UNKNOWN_CODE)
ID_COLUMN = "id"
CSV_COLUMNS: tuple[str, ...] = (ID_COLUMN, *ATTRIBUTES)
# Attributes compared by switch 7, the soft-biometric distance mask (METHOD §4).
MASKED_ATTRIBUTES: tuple[str, ...] = ("gender", "age", "ethnicity", "body_volume")
