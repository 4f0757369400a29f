"""The export's columns are written out (a published format) and checked against the leaf's fields at import."""

from __future__ import annotations

from ledger.entry import FIELDS
from ledger.export import COLUMNS, column_problem

NAMES = [f.name for f in FIELDS]


def test_the_columns_are_the_leafs_fields_then_hash_leaf_and_proof() -> None:
    assert column_problem(COLUMNS, NAMES) is None
    assert COLUMNS[: len(NAMES)] == tuple(NAMES)


def test_a_field_the_export_does_not_name_is_a_problem() -> None:
    problem = column_problem(COLUMNS, [*NAMES[:-1], "new_field", NAMES[-1]])
    assert problem is not None and "new_field" in problem and "EXPORT_FORMAT" in problem


def test_columns_out_of_the_leafs_order_are_a_problem() -> None:
    swapped = list(COLUMNS)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    problem = column_problem(swapped, NAMES)
    assert problem is not None and "order" in problem
