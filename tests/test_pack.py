"""Packed models (.vxz): quantization, the file format, lossless mode, random access, CLIs.

One tiny model is trained once for the module; every pack is decoded from disk and judged
against the grid it was trained on.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import vox_tf
from vox_tf import (grid_coding, lossless, pack, pack_finetuning, packed_model, quantization,
                    quantized_finetuning, train, train_config, weight_coding)
from vox_tf.grid import VoxelGrid, indices_from_dense, voxel_centers
from vox_tf.metrics import iou

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 64


def shell(resolution, radius=0.6):
    centers = voxel_centers(np.argwhere(np.ones((resolution,) * 3)), resolution)
    distance = np.linalg.norm(centers - [0.1, -0.05, 0.0], axis=1).reshape((resolution,) * 3)
    return np.abs(distance - radius) < 1.5 / resolution


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    voxels = VoxelGrid(RESOLUTION, indices_from_dense(shell(RESOLUTION)), np.array([1.0, 2.0, 3.0]),
                       0.5, "shell")
    config = train_config.TrainConfig("32:swish,32:swish", "32:swish,32:swish", epochs_coarse=20,
                                      epochs_fine=40, batch_size=512, eval_every=10,
                                      lr_schedule="cosine", learning_rate=0.01,
                                      jit_compile=False, verbose=0)
    out = tmp_path_factory.mktemp("run")
    return out, train.train_hierarchy(voxels, config, out), voxels


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", f"vox_tf.{module}", *map(str, args)], cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, timeout=300)


TRAINED = 20
"""Epochs of the 4-bit training in the packs that train: at pack's first rate its cosine needs
more than 6 to settle (6: 38 -> 11 wrong voxels, 20: 38 -> 1)."""


@pytest.fixture(scope="module")
def packed(run, tmp_path_factory):
    """{name: path} of files packed by the CLI: 8 bits, 4 bits fine-tuned, plainly quantized
    (also with the later kernels at 2 more bits), lossless, trained at their levels, and
    trained then fine-tuned."""
    run_dir, _, _ = run
    out = tmp_path_factory.mktemp("packed")
    files = {}
    for name, args in (("8", ["--bits", 8, "--finetune-epochs", 2]),
                       ("4", ["--bits", 4, "--finetune-epochs", 4, "--qat-epochs", 0]),
                       ("4-plain", ["--bits", 4, "--finetune-epochs", 0, "--qat-epochs", 0]),
                       ("4-plain-x3p6k2", ["--bits", 4, "--finetune-epochs", 0, "--qat-epochs", 0,
                                           "--input-extra-bits", 3, "--plane-extra-bits", 6,
                                           "--later-extra-bits", 2]),
                       ("4-lossless", ["--bits", 4, "--finetune-epochs", 4, "--lossless"]),
                       ("4-trained",
                        ["--bits", 4, "--finetune-epochs", 0, "--qat-epochs", TRAINED]),
                       ("4-trained-tuned",
                        ["--bits", 4, "--finetune-epochs", 2, "--qat-epochs", TRAINED])):
        path = out / f"{name}.vxz"
        result = cli("pack", run_dir, "-o", path, *args)
        assert result.returncode == 0, result.stderr[-2000:]
        files[name] = path
        files[f"{name} stdout"] = result.stdout
        files[f"{name} stderr"] = result.stderr
    return files


def test_quantization_is_per_output_channel_and_idempotent():
    weights = np.random.default_rng(0).normal(size=(45, 8)).astype(np.float32)
    weights[:, 3] *= 100.0  # one loud channel must not coarsen the others
    for bits in quantization.BITS:
        q = quantization.quantize(weights, bits)
        top = quantization.max_level(bits)
        assert q.levels.min() >= -top and q.levels.max() <= top and q.scales.shape == (8,)
        scales = q.scales.astype(np.float32)
        inside = np.abs(weights) <= top * scales  # not clipped
        assert np.all(np.abs(q.dequantize() - weights)[inside] <= 0.5001 * np.broadcast_to(scales, weights.shape)[inside])
        # an outlier channel keeps its own, coarser steps
        assert scales[3] > 50 * np.delete(scales, 3).max()
        # and each scale is a power of 2^(1/16), one byte in a file (two for the largest)
        exponents = quantization.scale_exponents(q.scales)
        assert np.array_equal(quantization.scales_from_exponents(exponents), q.scales)
        section, _ = weight_coding.weights_section([q])
        (back,) = weight_coding.read_weights_section(section, [weights.shape], [bits],
                                                     packed_model.VERSION)
        assert np.array_equal(back.scales, q.scales) and np.array_equal(back.levels, q.levels)
        planes = np.random.default_rng(1).laplace(0, 0.05, (3, 9, 9, 2)).astype(np.float32)
        for tensor in (weights, planes, weights[:, 0]):
            q = quantization.quantize(tensor, bits)
            again = quantization.quantize(q.dequantize(), bits)
            assert np.array_equal(again.levels, q.levels)
    bias = quantization.quantize(np.array([0.5, -0.25, 0.0]), 4)
    # exact at scale 1/8 (levels 4, -2, 0): no scale with 7 at the top is
    assert bias.scales.shape == (1,) and bias.dequantize().tolist() == [0.5, -0.25, 0.0]
    # levels whose largest is under Q (the learned rounding can round a peak down) are kept
    # (a tensor of one channel has a float16 scale, the others a power of 2^(1/16))
    for shape, scale in (((45, 8), quantization.scales_from_exponents([-40])[0]),
                         ((45,), np.float32(np.float16(0.177)))):
        levels = np.random.default_rng(2).integers(-5, 6, shape)
        levels[0] = 5
        values = (levels * scale).astype(np.float32)
        assert np.array_equal(quantization.quantize(values, 4).dequantize(), values)


def test_tri_planes_and_the_input_layer_get_more_bits_than_the_file(run, packed):
    run_dir, _, _ = run
    fine = vox_tf.load(run_dir).fine
    extra = {"triplane/planes": quantization.PLANE_EXTRA_BITS,
             "hidden_0/kernel": quantization.INPUT_LAYER_EXTRA_BITS}
    for bits in quantization.BITS:
        expected = [bits + extra.get(w.path, 0) for w in fine.weights]
        assert quantization.weight_bits(fine, bits) == expected
        assert max(expected) > bits  # the rule found both tensors
        narrower = quantization.ExtraBits(input_layer=0, planes=3)
        assert quantization.weight_bits(fine, bits, narrower) == [
            bits + {"triplane/planes": 3}.get(w.path, 0) for w in fine.weights]
    # and the file holds them so: its decoded planes take values 4 bits cannot
    planes = np.asarray(vox_tf.load(packed["4"]).fine.get_layer("triplane").planes)
    steps = np.abs(planes).max() / np.abs(planes[planes != 0]).min()
    assert steps > quantization.max_level(4)


def test_extra_bits_flags_give_each_tensor_the_bits_asked_for_and_the_file_records_them(
        run, packed):
    """--input-extra-bits, --plane-extra-bits and --later-extra-bits set the bits beyond the
    file's of the first Dense kernel, the tri-planes and the kernels after the first: each
    decoded tensor holds exactly those bits (quantized again at them it is unchanged, at one
    fewer it is not), the file records them and prints them."""
    fine = vox_tf.load(run[0]).fine
    asked = quantization.ExtraBits(input_layer=3, planes=6, later_kernels=2)
    assert asked.name == "x3p6k2"
    kernels = [layer.kernel.path for layer in quantization.dense_layers(fine)]
    planes = fine.get_layer("triplane").planes.path
    assert len(kernels) == 3
    assert quantization.weight_bits(fine, 4, asked) == [
        b + (6 - 4) * (w.path == planes) + (3 - 2) * (w.path == kernels[0])
        + 2 * (w.path in kernels[1:])
        for w, b in zip(fine.weights, quantization.weight_bits(fine, 4))]

    def held_bits(weights):
        return next(b for b in range(2, 17)
                    if np.array_equal(quantization.quantize(weights, b).dequantize(), weights))

    for name, extra in (("4-plain", quantization.DEFAULT_EXTRA_BITS), ("4-plain-x3p6k2", asked)):
        model = vox_tf.load(packed[name])
        assert (model.metrics["input_layer_extra_bits"], model.metrics["plane_extra_bits"],
                model.metrics["later_kernel_extra_bits"]) == (
                    extra.input_layer, extra.planes, extra.later_kernels)
        expected = dict(zip((w.path for w in fine.weights),
                            quantization.weight_bits(fine, 4, extra)))
        for weight in model.fine.weights:
            if weight.path in kernels or weight.path == planes:
                assert held_bits(np.asarray(weight)) == expected[weight.path], weight.path
    assert ("first layer +3 bits, tri-planes +6, later kernels +2"
            in packed["4-plain-x3p6k2 stdout"])
    assert packed["4-plain-x3p6k2"].stat().st_size > packed["4-plain"].stat().st_size


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_older_format_versions_still_decode(version):
    """tests/data/format_v<version>.vxz was written by that format version (1: square-law
    tri-planes at the file's bits; 2: planes and first kernel at more bits; both hold the
    coarse net's weights; 3: the coarse grid, float16 scales, the whole lattice, a lossless
    file with a calibrated probability residual; 4: one-byte scales, the read tri-plane nodes
    only, a lossless file with the first Dense kernel at 1 extra bit, the lattices' 4 not
    recorded; 5: both recorded, the coarse grid as LZMA2, one byte per channel scale; 6: the
    coarse grid context-coded, the scales entropy-coded, the later kernels' bits not recorded);
    beside it, the weights and grid that version's decoder rebuilt."""
    data = ROOT / "tests" / "data"
    model = vox_tf.load(data / f"format_v{version}.vxz")
    assert model.coarse_is_grid == (version >= 3)
    nets = [model.fine] if model.coarse_is_grid else [model.coarse, model.fine]
    with np.load(data / f"format_v{version}_weights.npz") as then:
        weights = [np.asarray(w) for net in nets for w in net.weights]
        assert len(weights) == len(then.files) - 1
        assert all(np.array_equal(w, then[f"w{i}"]) for i, w in enumerate(weights))
        assert np.array_equal(np.argwhere(model.predict_grid()), then["grid"])


def test_only_the_tri_plane_nodes_the_mask_reads_are_stored(run, packed):
    run_dir, _, _ = run
    model = vox_tf.load(run_dir)
    index, read = packed_model.read_plane_nodes(model.fine, model.coarse_grid(), model.resolution)
    assert 0 < read.sum() < read.size
    tensors = [quantization.quantize(w, b) for w, b in
               zip(packed_model.fine_weights_as_packed(model), quantization.weight_bits(model.fine, 8))]
    blob, sizes = packed_model.pack(model, 8)
    # the decoder puts the stored nodes back where they were, zeros elsewhere
    path = run_dir / "nodes.vxz"
    packed_model.write(path, blob)
    decoded = np.asarray(packed_model.read(path).fine.weights[index])
    path.unlink()
    assert np.array_equal(decoded, tensors[index].dequantize())
    assert not decoded[~read].any()
    # and the file is the smaller for it
    whole, _ = weight_coding.weights_section(tensors)
    assert sizes["weights_mixed"] < len(whole)


def test_the_coarse_stage_is_stored_as_the_float_coarse_nets_grid(run, packed):
    run_dir, _, _ = run
    float_model = vox_tf.load(run_dir)
    for name in ("8", "4", "4-lossless"):
        model = vox_tf.load(packed[name])
        assert model.coarse_is_grid and model.params_coarse == 0
        # the mask is the trained coarse net's, whatever the file's bits
        assert np.array_equal(model.coarse_grid(), float_model.coarse_grid())
    # and it costs less than the coarse net would at the fewest bits
    _, sizes = packed_model.pack(float_model, 8)
    assert 0 < sizes["coarse_grid"] < packed_model.network_bytes(float_model.coarse, 4) / 2
    with pytest.raises(ValueError, match="stored grid"):
        model.save(run_dir / "not_here")
    assert not (run_dir / "not_here").exists()


def test_packed_file_loads_with_the_reconstructor_api_and_8_bits_keep_the_iou(run, packed):
    run_dir, results, voxels = run
    float_model = vox_tf.load(run_dir)
    model = vox_tf.load(packed["8"])
    assert (model.resolution, model.coarse_resolution) == (RESOLUTION, 32)
    assert np.allclose(model.center, voxels.center) and model.scale == voxels.scale
    grid = model.predict_grid()
    assert abs(iou(grid, voxels.dense()) - results["iou"]) <= 0.005, (iou(grid, voxels.dense()), results["iou"])
    # The reconstruction changes in few voxels, and only where the float net was unsure.
    assert np.count_nonzero(grid != float_model.predict_grid()) <= 0.01 * len(voxels.indices)
    size = packed["8"].stat().st_size
    assert size < results["bytes_fp32"] / 3.5
    assert f"{size:,} bytes" in packed["8 stdout"] and "IoU" in packed["8 stdout"]
    # beside the file's IoU, the float32 model's, so a user sees what the bits cost
    assert f"float32 model {100 * results['iou']:.3f} %" in packed["8 stdout"]
    assert f"{100 * (iou(grid, voxels.dense()) - results['iou']):+.3f} points" in packed["8 stdout"]
    # results.json's size is the 8-bit file's, without fine-tuning
    assert results["bytes_packed"] == len(pack.pack_run(run_dir, 8, finetune_epochs=0)[0])
    assert results["bpov"] == pytest.approx(8 * results["bytes_packed"] / len(voxels.indices))
    assert results["lzma_bytes"] == packed_model.lzma_bytes(voxels.dense())


def test_both_weight_codings_are_measured_and_decode(run):
    run_dir, _, _ = run
    model = vox_tf.load(run_dir)
    tensors = quantization.quantize_model(model.fine, 6)
    codings = weight_coding.weight_codings(tensors)
    shapes = [t.levels.shape for t in tensors]
    for data in codings.values():
        decoded = weight_coding.decode_levels(data, shapes, [t.bits for t in tensors])
        assert all(np.array_equal(d, t.levels) for d, t in zip(decoded, tensors))
    _, sizes = packed_model.pack(model, 6)
    assert sizes[f"weights_{sizes['coder']}"] == min(sizes[f"weights_{name}"] for name in codings)


def test_finetuning_recovers_4_bit_iou_and_is_reused(run, packed):
    run_dir, results, voxels = run
    truth = voxels.dense()
    plain = iou(vox_tf.load(packed["4-plain"]).predict_grid(), truth)
    tuned = iou(vox_tf.load(packed["4"]).predict_grid(), truth)
    # 4 epochs take this model from 99.53 % to 99.986 % (float32: 100 %): the fine-tuning
    # must at least halve what quantizing alone loses
    assert 1 - tuned <= (1 - plain) / 2, (plain, tuned, results["iou"])
    assert "4-bit fine-tuning (first layer" in packed["4 stderr"]
    # every fine-tuning says what it kept, never more wrong voxels than rounding to nearest
    for stderr in (packed["4 stderr"], packed["8 stderr"], packed["4-lossless stderr"]):
        started = stderr.count("-bit fine-tuning (first layer")
        kept = re.findall(r"kept epoch (\d+): ([\d,]+) wrong voxels \(([\d,]+) plainly", stderr)
        assert len(kept) + stderr.count("beat the plain quantization") == started
        assert stderr.count("-bit fine-tuning: 100%") >= started  # each showed its progress
        assert all(int(k.replace(",", "")) <= int(p.replace(",", "")) for _, k, p in kept)
    # the lossless pack at the same settings reused the lossy file's fine-tuned weights
    # where it could, and tuned once for each other width
    default = quantization.DEFAULT_EXTRA_BITS
    tuned_again = [extra for extra in pack.LOSSLESS_EXTRA_BITS if extra != default]
    assert packed["4-lossless stderr"].count("fine-tuning (first") == len(tuned_again)
    # and is not trained at its levels first by default: that makes lossless files larger
    assert "-bit training" not in packed["4-lossless stderr"]
    for extra in tuned_again:
        assert (f"4-bit fine-tuning (first layer {4 + extra.input_layer} bits, tri-planes "
                f"{4 + extra.planes}, later kernels 4)") in packed["4-lossless stderr"]
    cached = {(4, default, 4, 0), (8, default, 2, 0), (4, default, 0, TRAINED),
              (4, default, 2, TRAINED), *((4, extra, 4, 0) for extra in tuned_again)}
    assert sorted(p.name for p in (run_dir / pack_finetuning.QUANTIZED_DIR).iterdir()) == sorted(
        pack_finetuning.finetune_cache_name(*settings) for settings in cached)


def test_training_at_the_levels_beats_quantizing_and_the_file_holds_what_it_judged(run, packed):
    _, _, voxels = run
    plain = pack.decoded_figures(packed["4-plain"], voxels)["wrong_voxels"]
    kept = re.search(r"4-bit training kept epoch (\d+): ([\d,]+) wrong voxels \(([\d,]+) plainly",
                     packed["4-trained stderr"])
    assert kept, packed["4-trained stderr"][-2000:]
    assert f"{TRAINED} epochs of 4-bit training, then 0 epochs" in packed["4-trained stderr"]
    assert "4-bit training: 100%" in packed["4-trained stderr"]  # it showed its progress
    # it started from the plain file, and its weights moved anywhere, not one level, to
    # leave at most a quarter of the plain file's wrong voxels (this model: 38 -> 1)
    assert int(kept.group(3).replace(",", "")) == plain
    trained = int(kept.group(2).replace(",", ""))
    assert trained <= plain / 4, (plain, trained)
    # its k-bit weights are what the packer quantizes again: the file is what was judged
    assert pack.decoded_figures(packed["4-trained"], voxels)["wrong_voxels"] == trained
    # a fine-tuning with other epochs starts from the kept training instead of training again,
    # and never does worse than it
    tuned = packed["4-trained-tuned stderr"]
    assert "4-bit training reused from" in tuned and "4-bit training:" not in tuned, tuned
    assert "4-bit fine-tuning kept epoch" in tuned or "beat the plain quantization" in tuned
    assert pack.decoded_figures(packed["4-trained-tuned"], voxels)["wrong_voxels"] <= trained


def _learned_rounding(decoded, weights, plain_scales, top):
    """Levels of ``decoded`` if each channel is one scale times levels that are each
    floor(w / s0) or floor(w / s0) + 1 (s0: the plain quantization's scale), else None."""
    down = np.floor(weights / plain_scales).reshape(-1, weights.shape[-1])
    choices = np.clip(down, -top, top), np.clip(down + 1, -top, top)
    values = decoded.reshape(down.shape)
    levels = np.zeros_like(values)
    for channel in range(values.shape[1]):
        column, largest = values[:, channel], np.argmax(np.abs(values[:, channel]))
        candidates = [choice[largest, channel] for choice in choices if choice[largest, channel]]
        for level in candidates or [1.0]:
            steps = column / (column[largest] / level) if column[largest] else column
            if np.allclose(steps, np.rint(steps), atol=1e-4) and np.all(
                    (np.rint(steps) == choices[0][:, channel])
                    | (np.rint(steps) == choices[1][:, channel])):
                levels[:, channel] = np.rint(steps)
                break
        else:
            return None
    return levels.reshape(weights.shape)


class _InterruptAfter:
    """A progress bar that stops the training at its ``n``-th epoch, as Ctrl-C would."""

    def __init__(self, n=None):
        self.n, self.updates = n, []

    def set_postfix(self, *args, **kwargs):
        pass

    def update(self, steps):
        self.updates.append(steps)
        if len(self.updates) == self.n:
            raise KeyboardInterrupt


def test_interrupted_training_at_the_levels_goes_on_from_its_last_judgement(run, tmp_path):
    run_dir, _, voxels = run
    model = vox_tf.load(run_dir)
    data = pack_finetuning.fine_stage_data_of(run_dir, model, voxels)
    checkpoint = tmp_path / "state.npz"
    fine = model.fine
    start = [np.asarray(w) for w in fine.weights]
    with pytest.raises(KeyboardInterrupt):  # in epoch 3, after the judgement of epoch 2
        quantized_finetuning.train_quantized(fine, data, 4, 6, 1e-3, 3e-3, evaluate_every=2,
                                             bar=_InterruptAfter(3), checkpoint=checkpoint)
    assert checkpoint.exists()
    plain = quantized_finetuning.train_quantized(
        vox_tf.load(run_dir).fine, data, 4, 0, 1e-3, 3e-3)["wrong_voxels_plain"]
    fine.set_weights(start)  # what a new process starts from
    bar = _InterruptAfter()
    outcome = quantized_finetuning.train_quantized(fine, data, 4, 6, 1e-3, 3e-3,
                                                   evaluate_every=2, bar=bar,
                                                   checkpoint=checkpoint)
    # it went on at epoch 3 with the first call's plain figure, and cleaned up after itself
    assert bar.updates == [2, 1, 1, 1, 1]
    assert outcome["wrong_voxels_plain"] == plain
    assert outcome["wrong_voxels"] <= plain and not checkpoint.exists()
    assert data.evaluate(fine, with_chamfer=False)["wrong_voxels"] == outcome["wrong_voxels"]


def test_by_default_a_lossy_file_is_trained_only_where_the_fine_tuning_alone_loses(
        run, packed, tmp_path, monkeypatch, capsys):
    """The training spreads the levels (more bytes): where the fine-tuning alone keeps the
    float32 model's IoU, the default keeps that file; where it loses, it trains, and keeps the
    trained file only where it loses less."""
    run_dir, _, _ = run
    copy = shutil.copytree(run_dir, tmp_path / "run")  # with the fixture's cached weights
    monkeypatch.setitem(pack_finetuning.QAT_MAX_EPOCHS, 8, TRAINED)
    monkeypatch.setitem(pack_finetuning.QAT_MAX_EPOCHS, 4, TRAINED)
    capsys.readouterr()
    kept = pack.pack_run(copy, bits=8, finetune_epochs=2)[0]  # 8 bits lose nothing
    stderr = capsys.readouterr().err
    assert f"(loses at most {pack.QAT_SKIP_POINTS}): kept, not trained" in stderr, stderr[-2000:]
    assert "-bit training" not in stderr
    assert kept == pack.pack_run(copy, bits=8, finetune_epochs=2, qat_epochs=0)[0]
    trained = pack.pack_run(copy, bits=4, finetune_epochs=0)[0]  # 4 bits plainly lose 38 voxels
    stderr = capsys.readouterr().err
    lost = re.search(r"4-bit fine-tuning alone: ([-+][\d.]+) IoU points against float32 "
                     r"\(loses more than ", stderr)
    assert lost and -float(lost.group(1)) > pack.QAT_SKIP_POINTS
    assert "4-bit training then fine-tuning: " in stderr and "against float32: kept it" in stderr
    assert trained == pack.pack_run(copy, bits=4, finetune_epochs=0, qat_epochs=TRAINED)[0]
    plain = pack.pack_run(copy, bits=4, finetune_epochs=0, qat_epochs=0)[0]
    assert trained != plain
    # a training thrown off at a rate far too high finds nothing better: the default keeps
    # the file the fine-tuning alone gives
    monkeypatch.setattr(pack_finetuning, "QAT_WEIGHT_LR", 30.0)
    assert pack.pack_run(copy, bits=4, finetune_epochs=0)[0] == plain
    assert "against float32: kept the fine-tuning alone" in capsys.readouterr().err


def test_by_default_the_training_runs_its_steps_in_whole_epochs_within_bounds(
        run, tmp_path, monkeypatch, capsys):
    """An epoch's batches go with the model's surface and resolution: the default trains a
    model of few batches an epoch for more epochs, within the bounds that were measured."""
    run_dir, _, voxels = run
    # none of the fixture's cached trainings: this one must train to say for how long
    copy = shutil.copytree(run_dir, tmp_path / "run",
                           ignore=shutil.ignore_patterns(pack_finetuning.QUANTIZED_DIR))
    batches = int(pack_finetuning.fine_stage_data_of(run_dir, vox_tf.load(run_dir), voxels)
                  .dataset.cardinality())
    # a step into the last epoch
    monkeypatch.setattr(pack_finetuning, "QAT_STEPS", (TRAINED - 1) * batches + 1)
    monkeypatch.setitem(pack_finetuning.QAT_MAX_EPOCHS, 4, 100 * TRAINED)
    monkeypatch.setattr(pack_finetuning, "QAT_MIN_EPOCHS", 1)
    capsys.readouterr()
    by_steps = pack.pack_run(copy, bits=4, finetune_epochs=0)[0]
    assert f"{TRAINED} epochs of 4-bit training" in capsys.readouterr().err
    assert by_steps == pack.pack_run(copy, bits=4, finetune_epochs=0, qat_epochs=TRAINED)[0]
    monkeypatch.setattr(pack_finetuning, "QAT_STEPS", 100 * TRAINED * batches)
    monkeypatch.setitem(pack_finetuning.QAT_MAX_EPOCHS, 4, TRAINED)
    assert pack.pack_run(copy, bits=4, finetune_epochs=0)[0] == by_steps
    monkeypatch.setattr(pack_finetuning, "QAT_STEPS", 1)
    monkeypatch.setattr(pack_finetuning, "QAT_MIN_EPOCHS", TRAINED)
    assert pack.pack_run(copy, bits=4, finetune_epochs=0)[0] == by_steps


def test_finetuning_rounds_kernels_up_or_down_and_learns_scales(run, packed):
    run_dir, _, voxels = run
    model = vox_tf.load(run_dir)
    # the file holds the tri-plane nodes some voxel reads, quantized at their own scales
    as_packed = packed_model.fine_weights_as_packed(model)
    tuned = vox_tf.load(packed["4"])
    kernels = [layer.kernel for layer in quantization.dense_layers(model.fine)]
    rounded = rescaled = 0
    for variable, weights, decoded, bits in zip(model.fine.weights, as_packed,
                                                tuned.fine.get_weights(),
                                                quantization.weight_bits(model.fine, 4)):
        plain = quantization.quantize(weights, bits)
        if any(variable is kernel for kernel in kernels):
            # each weight a whole number of its channel's (learned) scale: floor or ceil of
            # w / s0 at the plain scale s0
            levels = _learned_rounding(decoded, weights, plain.scales,
                                       quantization.max_level(bits))
            assert levels is not None, variable.path
            rounded += int((levels != plain.levels).sum())
        else:  # tri-planes and biases: at scales of their own, which the file keeps
            rescaled += int(np.sum(quantization.quantize(decoded, bits).scales != plain.scales))
    assert rounded > 0  # and not to the nearest level everywhere
    assert rescaled > 0
    # the file holds exactly the weights the fine-tuning judged
    kept = re.search(r"kept epoch \d+: ([\d,]+) wrong voxels", packed["4 stderr"])
    assert int(kept.group(1).replace(",", "")) == pack.decoded_figures(
        packed["4"], voxels)["wrong_voxels"]


def test_lossless_file_decodes_to_exactly_the_input(run, packed, tmp_path):
    run_dir, _, voxels = run
    out = tmp_path / "grid.npz"
    result = cli("unpack", packed["4-lossless"], "-o", out)
    assert result.returncode == 0, result.stderr
    decoded = VoxelGrid.load(out)
    assert np.array_equal(decoded.indices, voxels.indices)
    assert np.array_equal(vox_tf.load(packed["4-lossless"]).predict_grid(), voxels.dense())
    assert decoded.resolution == RESOLUTION and np.allclose(decoded.center, voxels.center)
    assert "residual: list" in packed["4-lossless stdout"]
    # of the widths tried, the file is the smallest and records its own; each is its lossy
    # file plus the residual
    metrics = vox_tf.load(packed["4-lossless"]).metrics
    extra = quantization.ExtraBits(metrics["input_layer_extra_bits"], metrics["plane_extra_bits"])
    assert (f"first layer +{extra.input_layer} bits, tri-planes +{extra.planes}"
            in packed["4-lossless stdout"])
    sizes = {}
    for width in pack.LOSSLESS_EXTRA_BITS:
        tuned = pack_finetuning.finetuned(run_dir, 4, 4, voxels, width)
        blob, parts = pack._lossless_file(tuned, 4, width, voxels.dense())
        lossy, _ = packed_model.pack(tuned, 4, extra_bits=width)
        assert len(blob) == len(lossy) + parts["residual"] + 13 > len(lossy)
        metrics = pack._decode_bytes(blob).metrics
        assert (metrics["input_layer_extra_bits"], metrics["plane_extra_bits"]) == (
            width.input_layer, width.planes)
        sizes[width] = len(blob)
    assert packed["4-lossless"].stat().st_size == sizes[extra] == min(sizes.values())


@pytest.mark.parametrize("method", [lossless.LIST, lossless.PROBABILITIES])
def test_both_residual_codings_reproduce_the_grid(method):
    rng = np.random.default_rng(1)
    truth = shell(32, 0.5)
    mask = np.zeros_like(truth)
    mask[2:30, 2:30, 3:29] = True  # some occupied voxels lie outside it
    probabilities = np.clip(truth[mask] * 0.8 + rng.normal(0.1, 0.2, mask.sum()), 0, 1)
    _, _, sizes = lossless.encode_residual(truth, mask, probabilities)
    assert set(sizes) == {"list", "probabilities"}
    prediction = np.zeros_like(truth)
    prediction[mask] = probabilities > 0.5
    wrong = np.flatnonzero(prediction != truth)
    outside = np.flatnonzero(truth & ~mask)
    data = (lossless.encode_list(wrong) if method == lossless.LIST else
            lossless.encode_probabilities(truth, mask, probabilities))
    decoded = lossless.decode_residual(method, data, mask, probabilities)
    grid = prediction.reshape(-1).copy()
    grid[decoded] ^= True
    assert np.array_equal(grid.reshape(truth.shape), truth)
    assert np.isin(outside, decoded).all()


def test_coarse_grids_decode_exactly_and_take_the_smaller_coding():
    """The coarse grid's coding (format 6) gives back every grid, odd sizes, empty and full
    ones included; a shell of cells (what a coarse grid is) costs less with the context coding
    than the LZMA2 of its packed bits (formats 3-5), and a grid LZMA codes better keeps LZMA."""
    rng = np.random.default_rng(4)
    centers = voxel_centers(np.argwhere(np.ones((32,) * 3)), 32).reshape(32, 32, 32, 3)
    noise = ndimage.gaussian_filter(rng.normal(size=(32, 32, 32)), 4)
    radius = np.linalg.norm(centers, axis=-1) + 0.2 * noise / np.abs(noise).max()
    bumpy = np.abs(radius - 0.6) < 1 / 32
    # a smooth ellipsoid's shell, pooled: rows that repeat from slice to slice, LZMA's case
    fine_centers = voxel_centers(np.argwhere(np.ones((64,) * 3)), 64)
    fine = np.linalg.norm(fine_centers * [1, 0.8, 1.2], axis=1)
    ellipsoid = (np.abs(fine - 0.6) < 1 / 64).reshape(32, 2, 32, 2, 32, 2).any(axis=(1, 3, 5))
    for grid in (bumpy, ellipsoid, rng.random((17, 17, 17)) < 0.3, np.zeros((8,) * 3, bool),
                 np.ones((5,) * 3, bool)):
        data = grid_coding.encode_grid(grid)
        assert np.array_equal(grid_coding.decode_grid(data, len(grid)), grid)
    lzma_size = len(lossless.compress(np.packbits(bumpy).tobytes()))
    coded = grid_coding.encode_grid(bumpy)
    assert coded[0] == grid_coding.CONTEXT and len(coded) < 0.9 * lzma_size
    assert grid_coding.encode_grid(ellipsoid)[0] == grid_coding.LZMA


def test_channel_scales_are_entropy_coded():
    """Format 6 codes a kernel's channel scales around their median in well under the one
    byte per channel of formats 4-5, and reads them back exactly."""
    rng = np.random.default_rng(5)
    kernel = rng.normal(size=(63, 128)) * rng.lognormal(0, 0.3, size=128)
    tensors = [quantization.quantize(kernel, 5), quantization.quantize(kernel[:, 0], 5)]
    data = weight_coding.scale_bytes(tensors)
    assert len(data) < 0.8 * (2 + 128 + 2)
    section, _ = weight_coding.weights_section(tensors)
    back = weight_coding.read_weights_section(section, [kernel.shape, (63,)], [5, 5],
                                              packed_model.VERSION)
    assert all(np.array_equal(b.scales, t.scales) for b, t in zip(back, tensors))


def test_calibrating_the_probabilities_shortens_the_residual():
    """An overconfident net (wrong answers at p = 0.002 or 0.998) codes its grid in fewer bytes
    once its probabilities are softened, and the temperature chosen is the one that does."""
    rng = np.random.default_rng(3)
    truth = rng.random(20_000) < 0.3
    wrong = rng.random(truth.size) < 0.05
    probabilities = np.where(truth ^ wrong, 0.998, 0.002)
    mask = np.ones(truth.size, bool)
    data = lossless.encode_probabilities(truth, mask, probabilities)
    raw = len(lossless.bernoulli_encode(truth, probabilities))
    assert len(data) < 0.8 * raw, (len(data), raw)
    temperature = np.frombuffer(data[4 + int.from_bytes(data[:4], "little"):][:2], np.float16)[0]
    assert temperature > 1
    decoded = lossless.decode_residual(lossless.PROBABILITIES, data, mask, probabilities)
    assert np.array_equal(decoded, np.flatnonzero(wrong))


def test_random_access_agrees_with_the_full_decode(run, packed):
    run_dir, _, _ = run
    rng = np.random.default_rng(2)
    for source in (run_dir, packed["4"], packed["4-lossless"]):
        model = vox_tf.load(source)
        grid = model.predict_grid()
        occupied = np.argwhere(grid)[rng.choice(int(grid.sum()), 300, replace=False)]
        indices = np.concatenate([occupied, rng.integers(0, RESOLUTION, (300, 3))]).astype(np.int32)
        fresh = vox_tf.load(source)
        answer = fresh.occupancy(indices)
        # no full decode, unless a lossless residual was coded with the fine net's probabilities
        assert fresh._mask is None or source == packed["4-lossless"]
        assert np.array_equal(answer, grid[indices[:, 0], indices[:, 1], indices[:, 2]])
        assert np.array_equal(fresh.occupancy(voxel_centers(indices, RESOLUTION)), answer)


def _damaged_files(good, tmp_path):
    data = good.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    newer = bytearray(data)
    newer[4] = packed_model.VERSION + 1
    files = {"truncated": data[:-10], "corrupted": bytes(flipped), "newer": bytes(newer),
             "foreign": b"PK\x03\x04 not a model at all", "empty": b""}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.vxz"
        paths[name].write_bytes(content)
    return paths


def test_bad_files_give_one_line_exit_2_and_write_nothing(packed, tmp_path):
    reasons = {"truncated": "truncated", "corrupted": "corrupted", "newer": "newer vox_tf",
               "foreign": "not a packed vox_tf model", "empty": "not a packed vox_tf model"}
    for name, path in _damaged_files(packed["8"], tmp_path).items():
        out = tmp_path / f"{name}.npz"
        result = cli("unpack", path, "-o", out)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}: ")
        assert reasons[name] in result.stderr, result.stderr
        assert not out.exists()
        with pytest.raises(vox_tf.MeshError, match=reasons[name]):
            vox_tf.load(path)
    with pytest.raises(vox_tf.MeshError, match="missing.vxz: cannot read"):
        vox_tf.load(tmp_path / "missing.vxz")


def test_pack_refuses_unfinished_runs_and_finds_a_search_runs_model(run, tmp_path):
    run_dir, _, _ = run
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "config.json", unfinished / "config.json")
    out = tmp_path / "m.vxz"
    result = cli("pack", unfinished, "-o", out)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {unfinished}: unfinished training: no trained model yet "
                      "(re-run the same vox_tf.train command to finish it)"]
    assert not out.exists()

    search = tmp_path / "search"
    search.mkdir()
    (search / "search.json").write_text(json.dumps({}))
    with pytest.raises(vox_tf.MeshError, match="unfinished search"):
        pack.model_dir(search)
    shutil.copytree(run_dir, search / "model", ignore=shutil.ignore_patterns("quantized"))
    assert pack.model_dir(search) == search / "model"
    blob, _, _ = pack.pack_run(search, bits=8, finetune_epochs=0)
    assert blob == pack.pack_run(run_dir, bits=8, finetune_epochs=0)[0]


def test_compression_bench_smoke_prints_every_figure():
    result = subprocess.run([sys.executable, "bench/compression.py", "--smoke"], cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for column in ("lzma", "bz2", "8-bit", "6-bit", "4-bit", "lossless"):
        assert column in result.stdout, result.stdout
    assert "torus" in result.stdout and "IoU" in result.stdout


def test_search_objective_can_price_packed_bytes_and_what_the_bits_lose(run, tmp_path):
    from vox_tf import search_config, search_space

    run_dir, _, voxels = run
    reconstructor = vox_tf.load(run_dir)
    fine = reconstructor.fine
    config_file = tmp_path / "packed.yaml"
    config_file.write_text("fine:\n  objective: {kind: packed_reward, a: 0.98, b: 7553, c: 2.0e+7, bits: 4}\n")
    objective = search_config.load_config(config_file).fine.objective
    assert (objective.kind, objective.bits) == ("packed_reward", 4)
    size = objective.size(fine)
    assert size == packed_model.network_bytes(fine, 4) < 0.6 * packed_model.network_bytes(fine, 8)
    metrics = {"accuracy": 0.99, "iou": 0.9, "chamfer_l2": 0.0, "wrong_voxels": 3}
    assert objective.score(metrics, size) == pytest.approx(0.01 + (7553 - size) / 2e7)
    # the accuracy it scores is the network's at 4 bits, not the float32 one's
    data = pack_finetuning.fine_stage_data_of(run_dir, reconstructor, voxels)
    before = [w.copy() for w in fine.get_weights()]
    float32 = data.evaluate(fine)
    value, judged = objective.rate(fine, data, float32)
    assert judged["wrong_voxels"] > float32["wrong_voxels"]
    assert all(np.array_equal(a, b) for a, b in zip(fine.get_weights(), before))  # restored
    assert value == pytest.approx(judged["accuracy"] - 0.98 + (7553 - size) / 2e7)
    scored = search_space.scored_metrics(float32, 1000, value, judged)
    assert (scored["objective"], scored["accuracy"], scored["wrong_voxels_judged"]) == (
        value, float32["accuracy"], judged["wrong_voxels"])
    priced_by_params = search_config.ObjectiveConfig()
    value, judged = priced_by_params.rate(fine, data, float32)
    assert judged is float32 and value == pytest.approx(
        float32["accuracy"] - 0.98 + (7553 - priced_by_params.size(fine)) / 21121)
    assert "wrong_voxels_judged" not in search_space.scored_metrics(float32, 1000, value, judged)
    bad = tmp_path / "bad.yaml"
    bad.write_text("fine:\n  objective: {kind: packed_reward, bits: 3}\n")
    with pytest.raises(vox_tf.MeshError, match="bits"):
        search_config.load_config(bad)
    # a packed file keeps the coarse stage as its grid: its network's bytes are no price
    bad.write_text("coarse:\n  objective: {kind: packed_reward}\n")
    with pytest.raises(vox_tf.MeshError, match="coarse.objective.kind: packed_reward"):
        search_config.load_config(bad)
