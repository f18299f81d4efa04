"""The table of a batch search: DIR/summary.csv and DIR/summary.md, one row per model.

A row is a dict keyed by SUMMARY_COLUMNS (failed models carry only ``model`` and ``error``);
with a reference table (vox_tf.reference_table) its columns follow ours, so the paper's
figures sit beside the measured ones. The last row holds the means over the models searched
without error (the reference's means over the same models, where it lists them).
"""

import csv
import io
import math
from pathlib import Path

from vox_tf.files import atomic_output

# bytes_packed, bpov and lzma_bytes come from newer results.json files: empty cells otherwise.
# superseded_*: the fine choice that a runner-up replaced (vox_tf.search_final), if one did.
SUMMARY_COLUMNS = ("model", "iou", "chamfer_l2", "params_coarse", "params_fine", "params",
                   "bytes_fp32", "bytes_packed", "bpov", "lzma_bytes", "seconds", "coarse_arch",
                   "fine_arch", "superseded_fine_arch", "superseded_iou", "error")
NUMERIC_COLUMNS = ("iou", "chamfer_l2", "params_coarse", "params_fine", "params", "bytes_fp32",
                   "bytes_packed", "bpov", "lzma_bytes", "seconds")
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"


def _percent(value):
    return f"{100 * value:.3f}"


def _number(pattern):
    return pattern.format


# (header, column, formatter, shown always): optional columns appear in summary.md only when
# some row has them, so an old run's table is not padded with empty columns.
MARKDOWN_COLUMNS = (
    ("IoU (%)", "iou", _percent, True),
    ("ref IoU (%)", "reference_iou", _percent, False),
    ("L2 chamfer", "chamfer_l2", _number("{:.3g}"), True),
    ("ref L2 chamfer", "reference_chamfer_l2", _number("{:.3g}"), False),
    ("params coarse", "params_coarse", _number("{:,.0f}"), True),
    ("params fine", "params_fine", _number("{:,.0f}"), True),
    ("params", "params", _number("{:,.0f}"), True),
    ("ref params", "reference_params", _number("{:,.0f}"), False),
    ("bytes (fp32)", "bytes_fp32", _number("{:,.0f}"), True),
    ("bytes packed", "bytes_packed", _number("{:,.0f}"), False),
    ("bits/voxel", "bpov", _number("{:.2f}"), False),
    ("seconds", "seconds", _number("{:.0f}"), True),
)


def summary_row(name, results):
    """One model's row from its results.json content.

    Args:
        name (str): the model (its run directory's name).
        results (dict): what vox_tf.search_pipeline.run_search returns.
    Returns:
        dict with SUMMARY_COLUMNS; ``error`` is "".

    Example:
        >>> summary_row("bunny", json.load(open("runs/many/bunny/results.json")))["iou"]
    """
    row = {column: results.get(column) for column in SUMMARY_COLUMNS}
    superseded = results.get("superseded", {})
    row.update(model=name, seconds=results.get("seconds_total"), error="",
               superseded_fine_arch=superseded.get("fine_arch"), superseded_iou=superseded.get("iou"))
    return row


def failure_row(name, reason):
    """The row of a model whose search failed: its name and the one-line reason."""
    return {"model": name, "error": reason}


def mean_row(rows, columns=NUMERIC_COLUMNS):
    """Means of ``columns`` over the rows without an error (None where no row has a value).

    Example:
        >>> mean_row([{"model": "a", "iou": 0.9}, {"model": "b", "error": "bad"}])["iou"]
        0.9
    """
    good = [r for r in rows if not r.get("error")]
    mean = {"model": f"mean of {len(good)}"}
    for column in columns:
        values = [r[column] for r in good
                  if isinstance(r.get(column), (int, float)) and math.isfinite(r[column])]
        mean[column] = sum(values) / len(values) if values else None
    return mean


def write_summary(out_dir, rows, reference=None):
    """DIR/summary.csv (every column, means last) and DIR/summary.md (a results table).

    Args:
        out_dir (str or Path): the batch's output directory.
        rows (list of dict): one row per model, in the batch's order (summary_row, failure_row).
        reference (vox_tf.reference_table.ReferenceTable, optional): its columns are added and
            filled by model name; empty cells for a model it does not list.

    Example:
        >>> write_summary("runs/many", [summary_row("bunny", results)])
    """
    out_dir = Path(out_dir)
    columns = SUMMARY_COLUMNS
    if reference is not None:
        rows = [{**row, **reference.values_for(row["model"])} for row in rows]
        columns += reference.columns
    table = rows + [mean_row(rows, NUMERIC_COLUMNS + (reference.columns if reference else ()))]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns if k in row})
    with atomic_output(out_dir / SUMMARY_CSV) as tmp:
        tmp.write_text(text.getvalue())
    with atomic_output(out_dir / SUMMARY_MD) as tmp:
        tmp.write_text(markdown_table(table))


def markdown_table(rows):
    """The summary as a Markdown table: IoU %, chamfer, params, bytes, seconds, and the reference's.

    The note says why a model failed, or which fine choice a runner-up replaced.

    Example:
        >>> print(markdown_table([{"model": "a", "iou": 0.5, "error": ""}]).splitlines()[2])
        | a | 50.000 | ...
    """
    shown = [(header, key, fmt) for header, key, fmt, always in MARKDOWN_COLUMNS
             if always or any(row.get(key) is not None for row in rows)]
    lines = ["| model | " + " | ".join(header for header, _, _ in shown) + " | note |",
             "|" + " --- |" * (len(shown) + 2)]
    for row in rows:
        cells = ["" if row.get(key) is None else fmt(row[key]) for _, key, fmt in shown]
        note = f"failed: {row['error']}" if row.get("error") else ""
        if row.get("superseded_fine_arch"):
            note = (f"fine net replaced {row['superseded_fine_arch']} "
                    f"(IoU {_percent(float(row['superseded_iou']))} %)")
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines) + "\n"


def read_summary(out_dir):
    """The model rows of DIR/summary.csv (the means row left out), as dicts of strings.

    Example:
        >>> [row["model"] for row in read_summary("runs/many")]
        ['bunny', 'dragon']
    """
    with open(Path(out_dir) / SUMMARY_CSV, newline="") as f:
        return list(csv.DictReader(f))[:-1]
