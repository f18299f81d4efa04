"""The compiled library: found, matched to the installed TensorFlow, refused clearly if not."""

import json
import shutil

import pytest

from vox_tf import _oplib


def test_installed_library_matches_installed_tensorflow():
    import tensorflow as tf

    assert _oplib.check_build().exists()
    assert json.loads(_oplib.BUILD_INFO.read_text())["tensorflow"] == tf.__version__


def _fake_ops_dir(tmp_path, monkeypatch, tensorflow_version):
    library = _oplib.library_path()
    shutil.copy(library, tmp_path / library.name)
    if tensorflow_version is not None:
        (tmp_path / "_build_info.json").write_text(json.dumps({"tensorflow": tensorflow_version}))
    monkeypatch.setattr(_oplib, "_HERE", tmp_path)
    monkeypatch.setattr(_oplib, "BUILD_INFO", tmp_path / "_build_info.json")


def test_library_built_against_another_tensorflow_is_refused_with_the_rebuild_command(
        tmp_path, monkeypatch):
    _fake_ops_dir(tmp_path, monkeypatch, "2.19.0")
    with pytest.raises(ImportError, match=r"built against TensorFlow 2\.19\.0.*make build"):
        _oplib.check_build()


def test_missing_library_is_refused_with_the_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.setattr(_oplib, "_HERE", tmp_path)
    monkeypatch.setattr(_oplib, "BUILD_INFO", tmp_path / "_build_info.json")
    with pytest.raises(ImportError, match="compiled ops are missing.*make build"):
        _oplib.check_build()


def test_library_without_build_record_is_refused(tmp_path, monkeypatch):
    _fake_ops_dir(tmp_path, monkeypatch, None)
    with pytest.raises(ImportError, match="make build"):
        _oplib.check_build()
