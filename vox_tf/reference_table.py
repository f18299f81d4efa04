"""A table of someone else's per-model results (e.g. the paper's), to print beside ours.

The CSV has a ``name`` column (the model: its file's stem, as in the batch's run directories)
and numeric columns, e.g. /work/shared/seedgrids/reference_results.csv::

    name,voxels,reference_iou,reference_chamfer_l2,...,lzma_bytes,gpcc_bytes
    thingi32_441708,133875,0.999851,9.118e-09,...,33864,9461

Each column goes into the summary as ``reference_<column>`` (a name already starting with
``reference_`` is kept), so it never collides with a column of our own results.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from vox_tf.errors import MeshError

NAME_COLUMN = "name"
PREFIX = "reference_"


@dataclass(frozen=True)
class ReferenceTable:
    """Reference values per model.

    Attributes:
        columns (tuple of str): summary column names, in the CSV's order.
        values (dict): model name -> {column: float, or None for an empty cell}.
    """

    columns: tuple
    values: dict

    def values_for(self, name):
        """{column: value} of model ``name``; every column None when the table does not list it."""
        return self.values.get(name, dict.fromkeys(self.columns))


def load_reference(path, model_names):
    """Reads a reference CSV and checks it against the models of the batch.

    Args:
        path (str or Path): the CSV.
        model_names (iterable of str): the batch's models; at least one must be in the CSV.
    Returns:
        ReferenceTable.
    Raises:
        MeshError naming the file: missing or unreadable, no ``name`` column, a duplicate name,
        a non-numeric or non-finite value, or no row for any model of the batch.

    Example:
        >>> table = load_reference("reference_results.csv", ["thingi32_441708"])
        >>> table.values_for("thingi32_441708")["reference_iou"]
        0.999851
    """
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MeshError(path, f"cannot read the reference table ({err})") from None
    if NAME_COLUMN not in header:
        raise MeshError(path, f"no '{NAME_COLUMN}' column in the header ({','.join(header)})")
    sources = [c for c in header if c != NAME_COLUMN]
    columns = tuple(c if c.startswith(PREFIX) else PREFIX + c for c in sources)
    values = {}
    for line, record in enumerate(records, start=2):
        name = record[NAME_COLUMN]
        if None in record or any(record[c] is None for c in sources):
            raise MeshError(path, f"line {line}: {len(header)} fields expected")
        if name in values:
            raise MeshError(path, f"line {line}: model {name!r} listed twice")
        values[name] = {column: _number(path, line, source, record[source])
                        for column, source in zip(columns, sources)}
    if not values.keys() & set(model_names):
        raise MeshError(path, "lists none of the models of this batch (matched by name: the "
                              "file's stem)")
    return ReferenceTable(columns, values)


def _number(path, line, column, text):
    if not text.strip():
        return None
    try:  # integers stay integers, so the summary shows 8089 and not 8089.0
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise MeshError(path, f"line {line}: {column}: expected a number, got {text!r}")
    return value
