"""The architecture search on a tiny procedural sphere: configs, outputs, TensorBoard HParams,
resume without re-running trials, and the command line (batch runs: test_batch.py)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import trimesh
import yaml
from tensorboard.plugins.hparams import plugin_data_pb2

import vox_tf
from vox_tf import search_final, search_pipeline
from vox_tf.errors import MeshError
from vox_tf.exports import ERROR_CLASSES
from vox_tf.mesh_io import from_trimesh
from vox_tf.layers import TriPlaneEncoding
from vox_tf.models import arch_of, format_arch
from vox_tf.search_filter import Candidate, Retrained, choose, filter_slate, pick_smallest
from vox_tf.hierarchy import occupancy_grid
from vox_tf.sampling import fine_samples, upsample_mask
from vox_tf.search_config import (DEFAULT_CONFIG, FilterConfig, ObjectiveConfig, SearchConfig,
                                  StageSearchConfig, load_config, widths_for)
from vox_tf.search_space import arch_from_values
from vox_tf.typed_config import from_dict
from vox_tf.voxelize import voxelize

REPO = Path(__file__).resolve().parents[1]

# Small enough for CI: 32^3 sphere, a 16^3 coarse stage, 5 Hyperband trials of <= 2 epochs.
TINY = {
    "resolution": 32, "coarse_resolution": 16,
    "encoding": {"positional_levels": 3, "triplane_resolution": 4, "coarse_triplane": False},
    "training": {"batch_size": 512, "learning_rate": 0.01, "jit_compile": False, "eval_every": 5,
                 "final_learning_rate": 0.005},
    **{stage: {"max_layers": 2, "widths": [8, 16], "hyperband": {"max_epochs": 2, "factor": 2},
               "filter": {"top": 2, "epochs": 10}, "final_epochs": 10}
       for stage in ("coarse", "fine")},
}
# More samples than 10 fine epochs of the sphere show: the final fine budget is set by them.
TINY["fine"]["final_samples"] = 200_000
# Ten epochs of 16 steps left both coarse candidates predicting nothing in one run of three
# (float noise decides), and the fine stage then has no mask: the coarse filter trains 40.
TINY["coarse"]["filter"]["epochs"] = 40


def write_config(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def sphere_voxels(resolution=32):
    return voxelize(from_trimesh(trimesh.creation.icosphere(subdivisions=3), "sphere"), resolution)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("config") / "tiny.yaml", TINY)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("run") / "sphere"
    return out, search_pipeline.run_search(sphere_voxels(), load_config(tiny_config), out, verbose=0)


def test_shipped_configs_load_with_method_defaults():
    quick = load_config(DEFAULT_CONFIG)
    paper = load_config(REPO / "tuner_configs" / "paper.yaml")
    assert quick.resolution == 128 and paper.resolution == 256
    assert (paper.coarse.objective.a, paper.coarse.objective.b, paper.coarse.objective.c) == (
        0.98, 7553, 21121)
    assert paper.coarse.filter.tolerance == 1e-4 and paper.fine.filter.top == 10
    assert widths_for(256) == (16, 32, 48, 64, 128) and widths_for(32) == (8, 16, 24, 32, 40, 48)
    # packed4.yaml is quick.yaml but for a fine stage priced as 4-bit files, searched wider
    packed4 = load_config(REPO / "tuner_configs" / "packed4.yaml")
    assert (packed4.fine.objective.kind, packed4.fine.objective.bits) == ("packed_reward", 4)
    assert max(packed4.fine.widths) > max(quick.fine.widths)
    assert (packed4.coarse, packed4.training, packed4.encoding) == (quick.coarse, quick.training,
                                                                    quick.encoding)


def test_default_config_fits_the_grid_resolution(tmp_path):
    at_128, at_256, at_512 = (load_config().for_resolution(r) for r in (128, 256, 512))
    assert (at_128.fine.max_layers, at_128.fine.widths) == (3, [32, 48, 64])
    # 256^3 and up: METHOD.md's fine widths for the grid, up to 6 layers; the coarse stage
    # (always 32^3) and the rest of the file unchanged.
    assert at_256.resolution == 256 and at_256.fine.max_layers == 6
    assert at_256.fine.widths_at(256) == [16, 32, 48, 64, 128]
    assert at_512.fine.widths_at(512) == [32, 48, 64, 96, 128]
    assert at_256.coarse == at_128.coarse
    # ... and the measured 256^3 training changes: higher positional level, focused epochs, a
    # final training that restarts lower.
    assert (at_128.encoding.positional_levels, at_128.training.focus) == (6, 0.0)
    assert (at_256.encoding.positional_levels, at_256.training.focus) == (9, 0.5)
    assert (at_128.training.final_settings(), at_256.training.final_settings()) == (
        {}, {"learning_rate": 3e-3})
    # ... three times the trials, and a filter that weighs parameters against wrong voxels.
    assert at_256.fine.hyperband.iterations == 3 and at_128.fine.hyperband.iterations == 1
    assert (at_256.fine.filter.choose, at_128.fine.filter.choose) == ("objective", "accuracy")
    assert at_256.fine.filter.most_accurate and not at_128.fine.filter.most_accurate
    assert (at_256.fine.filter.min_iou, at_128.fine.filter.min_iou) == (0.998, None)
    assert at_256.training.learning_rate == at_128.training.learning_rate
    # A user's config without by_resolution is used as written, whatever the grid.
    mine = write_config(tmp_path / "mine.yaml", {"fine": {"max_layers": 2}})
    assert load_config(mine).for_resolution(256).fine.max_layers == 2
    assert at_256.for_resolution(256) == at_256
    # A config read back from JSON (search.json records it) is the same config.
    assert from_dict(SearchConfig, json.loads(json.dumps(at_256.to_dict()))) == at_256
    bad = write_config(tmp_path / "bad.yaml", {"by_resolution": {256: {"fine": {"max_layer": 6}}}})
    with pytest.raises(MeshError, match=r"bad.yaml: by_resolution\.256\.fine\.max_layer: unknown key"):
        load_config(bad)


@pytest.mark.parametrize("data, message", [
    ({"coarse": {"hyperband": {"max_epoch": 3}}}, "coarse.hyperband.max_epoch: unknown key"),
    ({"fine": {"hyperband": {"max_epochs": 0}}}, "fine.hyperband.max_epochs: must be an integer >= 1"),
    ({"coarse": {"activations": ["tanh"]}}, "coarse.activations: must be a non-empty list"),
    ({"training": {"learning_rate": "fast"}}, "training.learning_rate: expected float"),
    ({"fine": {"objective": {"kind": "loss"}}}, "fine.objective.kind: must be one of"),
    ({"resolution": 16, "coarse_resolution": 32}, "coarse_resolution: must not exceed"),
    ({"training": {"focus": 1.0}}, "training.focus: must be in"),
    ({"fine": {"filter": {"choose": "size"}}}, "fine.filter.choose: must be one of"),
    ({"fine": {"final_samples": 0}}, "fine.final_samples: must be an integer >= 1"),
    ({"fine": {"filter": {"min_iou": 99.5}}}, r"fine.filter.min_iou: must be in \(0, 1\]"),
    ({"coarse": {"filter": {"min_iou": 0.99}}}, "coarse.filter.min_iou: only the fine stage"),
    ({"training": {"final_learning_rate": 0.0}}, "training.final_learning_rate: must be > 0 and >= min_lr"),
    ([1, 2], "must be a mapping"),
])
def test_bad_config_names_file_and_key(tmp_path, data, message):
    path = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(MeshError, match="bad.yaml: .*" + message.replace(".", r"\.")):
        load_config(path)


def test_pick_smallest_within_tolerance():
    candidates = [Candidate("64:elu", {}, 0.0, 0.99995, 900), Candidate("16:elu", {}, 0.0, 0.99990, 300),
                  Candidate("8:elu", {}, 0.0, 0.99900, 100)]
    assert pick_smallest(candidates, 1e-4).arch == "16:elu"
    assert pick_smallest(candidates, 0.0).arch == "64:elu"
    assert choose(candidates, FilterConfig(tolerance=1e-4)).arch == "16:elu"


def test_filter_choosing_by_objective_takes_the_best_reward_not_the_best_accuracy():
    # At 256^3 a 39k-parameter net retrained 20 epochs had 1,661 fewer wrong voxels than a
    # 20k one (thingi32_92763); the reward decides whether that is worth 19k parameters.
    objective = ObjectiveConfig(c=8.0e7)
    size = 256 ** 3
    big = {"accuracy": 1 - 105 / size}
    small = {"accuracy": 1 - 1766 / size}
    candidates = [Candidate("128:swish,128:elu,64:relu", {}, objective.score(big, 39559),
                            big["accuracy"], 39559),
                  Candidate("128:relu,32:elu,48:swish", {}, objective.score(small, 20487),
                            small["accuracy"], 20487)]
    assert choose(candidates, FilterConfig(choose="objective")).arch == "128:relu,32:elu,48:swish"
    # The same two under METHOD.md's rule: the most accurate within the tolerance.
    assert choose(candidates, FilterConfig(tolerance=0.0)).arch == "128:swish,128:elu,64:relu"


def test_filter_also_retrains_the_most_accurate_trial_when_asked():
    # mgn10_125611494287978_ShirtNoCoat at c = 5e7: the reward's top 3 were 12-18k-parameter
    # nets; the most accurate trial, a 46k one, is the runner-up the final step needs.
    trials = [Candidate("128:swish,16:relu,48:elu", {}, 0.01901, 0.999214, 17655, "05"),
              Candidate("64:swish,32:relu,32:swish,16:swish", {}, 0.01896, 0.999094, 14311, "02"),
              Candidate("32:swish,32:swish,32:elu,32:relu,16:elu", {}, 0.01894, 0.999040, 12295,
                        "11"),
              Candidate("64:swish,64:elu,32:elu,128:swish", {}, 0.01888, 0.999158, 21223, "07"),
              Candidate("128:swish,48:swish,48:elu,128:swish,128:relu", {}, 0.01872, 0.999495,
                        46183, "13")]
    plain = filter_slate(trials, FilterConfig(top=3))
    assert plain == trials[:3]
    with_best = filter_slate(trials, FilterConfig(top=3, most_accurate=True))
    assert with_best == trials[:3] + [trials[4]]
    # Already among the top: nothing added.
    assert filter_slate(trials, FilterConfig(top=5, most_accurate=True)) == trials
    assert filter_slate([], FilterConfig(top=3, most_accurate=True)) == []


def test_a_choice_that_ends_below_min_iou_gets_a_runner_up_more_accurate_after_the_filter():
    # mgn10_125611504997669_LongCoat at c = 5e7: the chosen 21,223-parameter net ended with
    # fewer wrong voxels (1,729) than the 46,183 one had after the filter (1,871), at IoU 97.9 %.
    size = 256 ** 3
    retrained = [Retrained(Candidate(arch, {}, score, 1 - wrong / size, params), f"{i:02d}")
                 for i, (arch, score, wrong, params) in enumerate([
                     ("128:swish,16:relu,48:elu", 0.019086, 11943, 17655),
                     ("128:swish,48:swish,48:elu,128:swish,128:relu", 0.019116, 1871, 46183),
                     ("64:swish,64:elu,32:elu,128:swish", 0.019235, 8246, 21223)])]
    final = {"accuracy": 1 - 1729 / size, "iou": 0.97878}
    chosen = "64:swish,64:elu,32:elu,128:swish"
    assert search_final.runner_up(retrained, chosen, final) is None
    assert search_final.runner_up(retrained, chosen, final, 0.99).model_path == "01"
    # Above the floor the choice stands; a less accurate candidate is never the runner-up.
    assert search_final.runner_up(retrained, chosen, {**final, "iou": 0.996}, 0.995) is None
    assert search_final.runner_up(retrained[:1] + retrained[2:], chosen, final, 0.99) is None


def test_a_search_pricing_4_bit_files_judges_each_fine_trial_at_4_bits(tmp_path):
    """packed_reward prices what a 4-bit file holds: each fine trial is scored on its weights
    quantized to 4 bits (how much they lose: tests/test_pack.py), and reports what they get
    wrong beside what its float32 weights do."""
    fine = {**TINY["fine"], "objective": {"kind": "packed_reward", "c": 2.0e7, "bits": 4}}
    config = load_config(write_config(tmp_path / "packed.yaml", {**TINY, "fine": fine}))
    out = tmp_path / "sphere"
    search_pipeline.run_search(sphere_voxels(), config, out, verbose=0)
    trials = [json.loads(path.read_text())["metrics"]["metrics"]
              for path in sorted((out / "search" / "fine").glob("trial_*/trial.json"))]

    def last(metrics, key):
        return metrics[key]["observations"][-1]["value"][0]

    assert len(trials) > 1 and all("wrong_voxels_judged" in metrics for metrics in trials)
    # a trial of two epochs is far from its grid, but 4 bits move some of its voxels
    assert any(last(m, "wrong_voxels_judged") != last(m, "wrong_voxels") for m in trials)
    boards = sorted(p for p in (out / "tensorboard" / "fine").iterdir() if p.is_dir())
    assert boards and all(("scalars", "epoch_wrong_voxels_judged") in _plugin_names(board)
                          for board in boards)


def test_conditional_layers_only_count_while_active():
    values = {"layers": 1, "width_0": 16, "activation_0": "relu", "width_1": 8, "activation_1": "elu"}
    assert arch_from_values(values) == "16:relu"


def test_search_outputs_a_loadable_model_and_results(run):
    out, results = run
    for key in ("iou", "chamfer_l2", "params_coarse", "params_fine", "seconds_coarse",
                "coarse_arch", "fine_arch", "trials", "seconds_search"):
        assert key in results
    assert results["trials"] == results["trials_coarse"] + results["trials_fine"] >= 8
    saved = json.loads((out / "results.json").read_text())
    assert saved["fine_arch"] == results["fine_arch"]
    assert (out / "preview.png").stat().st_size > 0
    model = vox_tf.load(out / "model")
    assert model.metadata()["fine_arch"] == results["fine_arch"]
    assert model.params_coarse == results["params_coarse"]
    # The chosen layers come from the searched space.
    for spec in (results["coarse_arch"], results["fine_arch"]):
        layers = [layer.split(":") for layer in spec.split(",")]
        assert 1 <= len(layers) <= 2 and all(int(w) in (8, 16) for w, _ in layers)
    # The reloaded reconstructor gives the reconstruction the search scored.
    assert model.predict_grid().sum() == results["predicted_voxels"]
    # coarse_triplane: false leaves the planes out of the coarse network only.
    assert not any(isinstance(layer, TriPlaneEncoding) for layer in model.coarse.layers)
    assert any(isinstance(layer, TriPlaneEncoding) for layer in model.fine.layers)


def _plugin_names(directory, pattern="**/events.out.tfevents.*"):
    """{(plugin name, tag)} of every summary in the event files under ``directory``."""
    names = set()
    for path in Path(directory).glob(pattern):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                names.add((value.metadata.plugin_data.plugin_name, value.tag))
    return names


def _experiment_hparams(directory):
    """Names of the hyperparameters declared by the HParams experiment in ``directory``'s events."""
    for path in Path(directory).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "_hparams_/experiment":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content)
                    return ({h.name for h in data.experiment.hparam_infos},
                            {m.name.tag for m in data.experiment.metric_infos})
    return None


def test_tensorboard_shows_both_stages_trials_pictures_and_3d_errors(run):
    out, results = run
    logs = out / "tensorboard"
    # One HParams experiment at the root covers the trials of both stages.
    hparams, metrics = _experiment_hparams(logs)
    assert {"layers", "width_0", "activation_0"} <= hparams
    assert {"epoch_objective", "epoch_wrong_voxels", "epoch_params", "epoch_iou"} <= metrics
    for stage in ("coarse", "fine"):
        assert _experiment_hparams(logs / stage) is None
        trials = sorted(p for p in (logs / stage).iterdir() if p.is_dir())
        assert len(trials) == results[f"trials_{stage}"]
        for trial in trials:
            tags = _plugin_names(trial)
            assert ("hparams", "_hparams_/session_start_info") in tags, trial
            for scalar in ("epoch_loss", "epoch_wrong_voxels", "epoch_params"):
                assert ("scalars", scalar) in tags, (trial, scalar)
            assert ("images", "reconstruction") in tags, trial  # the trial's last state
    # Each trial is its own session group, the stage in its name (both stages count from 0000).
    groups = set()
    for path in logs.glob("*/*/*/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    groups.add(plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content).session_start_info.group_name)
    assert len(groups) == results["trials_coarse"] + results["trials_fine"]
    assert {g.split()[0] for g in groups} == {"coarse", "fine"}
    # The final training: a picture at each grid evaluation, then the preview and 3D errors.
    fine = _plugin_names(out / "model" / "fine")
    assert ("images", "reconstruction") in fine and ("scalars", "epoch_loss") in fine
    final = _plugin_names(out / "model" / "final")
    assert ("images", "preview") in final
    assert {("mesh", "errors_VERTEX"), ("mesh", "errors_COLOR")} <= final


def test_error_projections_mark_each_kind_of_voxel():
    from vox_tf.tensorboard_summaries import error_projections

    target = np.zeros((8, 8, 8), bool)
    target[2:6, 2:6, 2:6] = True
    pred = target.copy()
    pred[0, 0, 0] = True      # false positive
    pred[3, 3, 5] = False     # false negative, hidden behind true positives along x and y
    image = error_projections(pred, target)
    assert image.dtype == np.uint8 and image.shape == (192, 576, 3)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    for _, colour in ERROR_CLASSES:
        assert tuple(np.round(255 * np.array(colour)).astype(np.uint8)) in colours, colour


def test_rerun_reuses_finished_trials(run, tiny_config):
    out, results = run
    trial_files = sorted((out / "search").glob("*/trial_*/trial.json"))
    before = {p: p.stat().st_mtime_ns for p in trial_files}
    again = search_pipeline.run_search(sphere_voxels(), load_config(tiny_config), out, verbose=0)
    assert again["trials"] == results["trials"]
    assert sorted((out / "search").glob("*/trial_*/trial.json")) == trial_files
    assert {p: p.stat().st_mtime_ns for p in trial_files} == before
    assert again["fine_arch"] == results["fine_arch"]


def test_final_training_gets_final_samples_and_final_learning_rate(run, tiny_config, monkeypatch):
    out, _ = run
    config = load_config(tiny_config)
    voxels = sphere_voxels()
    coarse = keras.saving.load_model(out / "search" / "coarse_choice.keras", compile=False)
    mask = upsample_mask(occupancy_grid(coarse, config.coarse_resolution), voxels.resolution)
    per_epoch = len(fine_samples(voxels, mask))
    expected = -(-config.fine.final_samples // per_epoch)
    assert expected > config.fine.final_epochs, "the test wants final_samples to decide"
    budgets = {}

    def record_budgets(voxels, final, *args, **kwargs):
        budgets.update(coarse=final.epochs_coarse, fine=final.epochs_fine, lr=final.learning_rate)
        raise InterruptedError

    monkeypatch.setattr(search_final, "train_hierarchy", record_budgets)
    with pytest.raises(InterruptedError):
        search_pipeline.run_search(voxels, config, out, verbose=0)
    assert budgets == {"coarse": config.coarse.final_epochs, "fine": expected,
                       "lr": config.training.final_learning_rate}
    assert StageSearchConfig(final_epochs=60, final_samples=10**8).final_epochs_for(10**6) == 100
    assert StageSearchConfig(final_epochs=60, final_samples=10**6).final_epochs_for(10**6) == 60
    assert StageSearchConfig(final_epochs=60).final_epochs_for(1) == 60


def test_a_choice_that_ends_short_of_a_runner_up_is_replaced_by_it(run, tiny_config, tmp_path,
                                                                    monkeypatch):
    # The finished run's trials and filters are reused: only the final trainings run again.
    out = tmp_path / "sphere"
    shutil.copytree(run[0], out, ignore=shutil.ignore_patterns("model", "results.json"))
    trained, real = [], search_final.train_hierarchy

    def first_ends_short(voxels, final, out_dir, start=None):
        results = real(voxels, final, out_dir, start=start)
        trained.append(final.fine_arch)
        # As if the chosen net had ended below every other filter candidate.
        return {**results, "accuracy": 0.0} if len(trained) == 1 else results

    monkeypatch.setattr(search_final, "train_hierarchy", first_ends_short)
    config = load_config(tiny_config)
    results = search_pipeline.run_search(sphere_voxels(), config, out, verbose=0)
    chosen, replacement = trained
    assert replacement != chosen and results["fine_arch"] == replacement
    assert results["superseded"]["fine_arch"] == chosen
    assert json.loads((out / "results.json").read_text())["fine_arch"] == replacement
    assert json.loads((out / "search" / "fine_final_superseded" / "results.json").read_text())[
        "fine_arch"] == chosen
    assert format_arch(arch_of(vox_tf.load(out / "model").fine)) == replacement
    # A re-run keeps to the replacement, whatever the first run's accuracy says now.
    monkeypatch.setattr(search_final, "train_hierarchy", real)
    again = search_pipeline.run_search(sphere_voxels(), config, out, verbose=0)
    assert again["fine_arch"] == replacement and again["iou"] == results["iou"]


def test_rerun_with_other_settings_is_refused(run, tiny_config):
    out, _ = run
    other = load_config(tiny_config)
    other.fine.final_epochs += 1
    with pytest.raises(ValueError, match=r"search with other settings \(config\.fine\)"):
        search_pipeline.run_search(sphere_voxels(), other, out, verbose=0)


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {"fine": {"filter": {"top": 0}}})
    # Run from another directory: the default config is still found, the mesh is what fails.
    cases = {"bad.yaml: fine.filter.top": ["--config", str(bad)],
             "missing.obj": ["--mesh", str(tmp_path / "missing.obj")],
             "resolution must be an integer in [8, 1024], got 4": ["--resolution", "4"]}
    for expected, args in cases.items():
        out = tmp_path / "out"
        done = subprocess.run([sys.executable, "-m", "vox_tf.search", *args, "--out", str(out)],
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and expected in last, last
        assert not out.exists()
