"""Batch searches as an Apache Beam pipeline: one element per model, on any Beam runner.

    python -m vox_tf.search --voxel-dir grids/ --out runs/grids \\
        --beam-pipeline-options "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"

Each element is a picklable model source (vox_tf.batch: MeshFile, VoxelFile, TfdsExample)
searched whole by vox_tf.batch.search_model into OUT/<name>/, the run directory of the
in-process loop; the rows are then gathered into OUT/summary.csv and OUT/summary.md, written
as the loop writes them. OUT must be a file system that every worker and the launcher see.

Failures stay inside the element (search_model records them), so a bad model never makes
the runner retry a bundle; re-running the same command skips finished models and resumes an
interrupted one from its run directory.
"""

import os
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from vox_tf.batch import search_model
from vox_tf.batch_summary import read_summary, write_summary
from vox_tf.errors import MeshError

# The runners that run every worker on this machine, which share its cores.
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner")


def pipeline_options(text):
    """``tfds build``'s --beam_pipeline_options style, "key=value,key=value", -> PipelineOptions.

    Raises:
        MeshError naming the option text if Beam's parser rejects a value.

    Example:
        >>> pipeline_options("runner=DirectRunner,direct_num_workers=2").view_as(DirectOptions)
    """
    flags = [f"--{item.strip()}" for item in text.split(",") if item.strip()]
    options = PipelineOptions(flags)
    try:
        options.get_all_options()  # parses now, so a bad value stops before any work
    except SystemExit:  # Beam's argparse exits on a bad value (it printed the reason)
        raise MeshError("--beam-pipeline-options", f"Beam cannot parse {text!r}") from None
    return options


def local_workers(options):
    """How many workers a local runner starts on this machine (Beam's direct_num_workers, 0 =
    one per core); None for a cluster runner, whose workers have their own machines."""
    if (options.view_as(StandardOptions).runner or "DirectRunner") not in LOCAL_RUNNERS:
        return None
    workers = options.view_as(DirectOptions).direct_num_workers
    return workers if workers > 0 else os.cpu_count()


def default_threads(options):
    """TensorFlow threads per worker: this machine's cores shared among the local workers,
    None (TensorFlow's own default, all the worker's cores) on a cluster runner."""
    workers = local_workers(options)
    return None if workers is None else max(1, (os.cpu_count() or 1) // workers)


def limit_tensorflow_threads(threads):
    """Sizes this process's TensorFlow thread pools; must run before TensorFlow's first op."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as err:  # already initialised: the search still runs, just slower
        print(f"warning: TensorFlow threads not limited to {threads} ({err})", file=sys.stderr)


class SearchModels(beam.DoFn):
    """(index, source) -> (index, summary row): one model's whole search per element."""

    def __init__(self, config, out_dir, threads, verbose):
        self.config, self.out_dir, self.threads, self.verbose = config, str(out_dir), threads, verbose

    def setup(self):
        # A worker's first DoFn setup comes before its first TensorFlow op.
        if self.threads:
            limit_tensorflow_threads(self.threads)

    def process(self, element):
        index, source = element
        yield index, search_model(source, self.config, self.out_dir, self.verbose)


def _write_ordered_summary(indexed_rows, out_dir, reference):
    write_summary(out_dir, [row for _, row in sorted(indexed_rows, key=lambda item: item[0])],
                  reference)


def _runner(options):
    """Beam 2.77's DirectRunner tries the Prism runner first, which downloads a binary from
    GitHub (a stall where the network hangs) and ignores direct_running_mode; it then falls
    back to FnApiRunner. vox_tf goes to FnApiRunner directly, offline and with the requested
    worker processes. Any other runner is Beam's to choose (None)."""
    if (options.view_as(StandardOptions).runner or "DirectRunner") == "DirectRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return None


def run_beam_batch(sources, config, out_dir, options, threads_per_worker=None, verbose=0,
                   reference=None):
    """Searches every source as an element of a Beam pipeline; writes OUT's summary.

    Args:
        sources (list): MeshFile, VoxelFile or TfdsExample, in the summary's order.
        config (SearchConfig): the settings of every search.
        out_dir (str or Path): OUT, seen by every worker: OUT/<name>/ per model, summary.csv/.md.
        options (PipelineOptions): the runner and its settings (pipeline_options).
        threads_per_worker (int, optional): TensorFlow threads per worker; default
            default_threads(options).
        verbose (int): Keras verbosity of the searches (0 keeps workers' logs apart).
        reference (vox_tf.reference_table.ReferenceTable, optional): columns beside ours.
    Returns:
        list of dict: the model rows of OUT/summary.csv (strings), failures included.

    Example:
        >>> rows = run_beam_batch(voxel_dir_sources("grids"), load_config(), "runs/grids",
        ...                       pipeline_options("direct_num_workers=2,"
        ...                                        "direct_running_mode=multi_processing"))
    """
    threads = threads_per_worker or default_threads(options)
    with beam.Pipeline(runner=_runner(options), options=options) as pipeline:
        _ = (pipeline
             | "models" >> beam.Create(list(enumerate(sources)))
             # Breaks fusion with Create, so the models spread over the workers.
             | "spread" >> beam.Reshuffle()
             | "search" >> beam.ParDo(SearchModels(config, out_dir, threads, verbose))
             | "gather" >> beam.combiners.ToList()
             | "summary" >> beam.Map(_write_ordered_summary, str(out_dir), reference))
    return read_summary(out_dir)
