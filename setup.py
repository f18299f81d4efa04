"""Builds vox_tf and compiles custom_ops/ into vox_tf/ops/_vox_ops*.so against the installed
TensorFlow (its own compile and link flags), so install with build isolation off:
``pip install --no-build-isolation -e .`` (``make build`` does this).

CUDA kernels (custom_ops/kernels/*.cu.cc) are added when VOX_TF_CUDA is 1, or when it is
"auto" (the default) and both nvcc and a CUDA-enabled TensorFlow are present; VOX_TF_CUDA=0
builds for the CPU alone.
"""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
OPS = ROOT / "custom_ops"
CXXFLAGS = ["-O3", "-fPIC", "-Wall", "-Wno-sign-compare", "-Wno-deprecated-declarations",
            "-Wno-interference-size",
            # Exact float semantics: the voxelizer's separating-axis test must decide
            # triangles lying on voxel faces the same way as its reference.
            "-ffp-contract=off"]


def _tensorflow_flags():
    try:
        import tensorflow as tf
    except ImportError:
        sys.exit("vox_tf's ops compile against the installed TensorFlow: install it first "
                 "(pip install -r requirements.txt), then pip install --no-build-isolation .")
    return tf, tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags()


def _find_nvcc():
    """nvcc inside a CUDA toolkit with its headers and static runtime, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if shutil.which("nvcc"):
        candidates.append(Path(shutil.which("nvcc")).resolve().parent.parent)
    candidates.append("/usr/local/cuda")
    for home in filter(None, candidates):
        home = Path(home)
        if all((home / f).exists() for f in
               ("bin/nvcc", "include/cuda_runtime.h", "lib64/libcudart_static.a")):
            return home / "bin" / "nvcc"
    return None


def _want_cuda(tf):
    choice = os.environ.get("VOX_TF_CUDA", "auto").lower()
    if choice not in {"0", "1", "auto"}:
        sys.exit(f"VOX_TF_CUDA must be 0, 1 or auto, got {choice!r}")
    nvcc = _find_nvcc()
    if choice == "1" and (nvcc is None or not tf.test.is_built_with_cuda()):
        sys.exit("VOX_TF_CUDA=1 needs nvcc (on PATH or in $CUDA_HOME/bin) and a CUDA-enabled "
                 "TensorFlow")
    if choice == "0" or nvcc is None or not tf.test.is_built_with_cuda():
        return None
    return nvcc


def _gencode_flags(nvcc, tf):
    """The GPU targets TensorFlow was built for that this nvcc can still produce.

    Where it can no longer produce some (nvcc 13 dropped sm_60 and sm_70 of TensorFlow 2.21's
    list), PTX of the oldest architecture it still knows is added: the driver compiles it for
    any GPU from there up, so a T4 (sm_75) is not left without a kernel it can run.
    """
    def listed(option):
        return subprocess.run([str(nvcc), option], capture_output=True, text=True,
                              check=True).stdout.split()

    codes, archs = set(listed("--list-gpu-code")), listed("--list-gpu-arch")
    targets = tf.sysconfig.get_build_info()["cuda_compute_capabilities"]
    flags = []
    for target in targets:
        virtual = "compute_" + target.split("_")[1]
        if (target in codes or target in archs) and virtual in archs:
            flags.append(f"-gencode=arch={virtual},code={target}")
    if not flags:
        sys.exit(f"{nvcc} can build none of TensorFlow's GPU targets; set VOX_TF_CUDA=0")
    if len(flags) < len(targets):
        oldest = min(archs, key=lambda arch: int("".join(filter(str.isdigit, arch))))
        flags.append(f"-gencode=arch={oldest},code={oldest}")
    return flags


class BuildTensorFlowOps(build_ext):
    """Compiles the op library with TensorFlow's flags instead of Python's."""

    def build_extension(self, ext):
        tf, tf_cflags, tf_lflags = _tensorflow_flags()
        nvcc = _want_cuda(tf)
        output = Path(self.get_ext_fullpath(ext.name))
        try:
            self._compile_and_link(ext, output, tf, tf_cflags, tf_lflags, nvcc)
        except subprocess.CalledProcessError:
            if not nvcc or os.environ.get("VOX_TF_CUDA", "auto") == "1":
                raise
            # The CPU kernels never depend on the CUDA ones: a toolchain that cannot build
            # them must not cost the user the whole library.
            print(f"warning: the CUDA kernels failed to build with {nvcc}; building for the CPU "
                  "alone (set VOX_TF_CUDA=1 to make this an error)", flush=True)
            nvcc = None
            self._compile_and_link(ext, output, tf, tf_cflags, tf_lflags, nvcc)
        # Lets `import vox_tf` refuse a library built against another TensorFlow.
        (output.parent / "_build_info.json").write_text(
            json.dumps({"tensorflow": tf.__version__, "cuda": bool(nvcc)}) + "\n")

    def _compile_and_link(self, ext, output, tf, tf_cflags, tf_lflags, nvcc):
        tmp = Path(self.build_temp) / "custom_ops"
        tmp.mkdir(parents=True, exist_ok=True)
        cxx = os.environ.get("CXX", "g++")
        cuda_home = nvcc.parent.parent if nvcc else None
        defines = ["-DGOOGLE_CUDA=1", f"-I{cuda_home / 'include'}"] if nvcc else []
        sources = [Path(s) for s in ext.sources if nvcc or not s.endswith(".cu.cc")]
        jobs = []
        for source in sources:
            obj = tmp / (source.name + ".o")
            if source.name.endswith(".cu.cc"):
                jobs.append([str(nvcc), "-c", "-x", "cu", str(source), "-o", str(obj), "-O3",
                             "-std=c++17", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
                             "-DNDEBUG", *_gencode_flags(nvcc, tf), *defines, *tf_cflags,
                             f"-I{OPS / 'kernels'}"])
            else:
                jobs.append([cxx, "-c", str(source), "-o", str(obj), *CXXFLAGS, *defines,
                             *tf_cflags, f"-I{OPS / 'kernels'}"])
        # Each TensorFlow translation unit takes tens of seconds: compile them side by side.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(self._run, jobs))
        libs = []
        if nvcc:
            libs = [f"-L{cuda_home / 'lib64'}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
        output.parent.mkdir(parents=True, exist_ok=True)
        objects = [str(tmp / (source.name + ".o")) for source in sources]
        self._run([cxx, "-shared", "-o", str(output), *objects, *tf_lflags, *libs])

    def copy_extensions_to_source(self):
        # In-place and editable builds copy the library into the source tree; its build
        # record must travel with it.
        super().copy_extensions_to_source()
        for ext in self.extensions:
            package = Path(*ext.name.split(".")[:-1])
            shutil.copyfile(Path(self.build_lib) / package / "_build_info.json",
                            ROOT / package / "_build_info.json")

    def _run(self, command):
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)


def _sources():
    return sorted(str(p.relative_to(ROOT)) for p in OPS.glob("*/*.cc"))


setup(
    name="vox_tf",
    version="0.1.0",
    description="Voxel reconstruction with tiny neural networks found by architecture search",
    python_requires=">=3.11",
    packages=find_packages(include=["vox_tf", "vox_tf.*"]) + [
        "vox_tf.datasets", "vox_tf.datasets.voxel_dataset", "vox_tf.tuner_configs"],
    # The TFDS builder lives in the top-level datasets/ folder but installs under vox_tf, so
    # no top-level package named `datasets` shadows the popular library of that name; the
    # search configs travel with the package so the default one is found from anywhere.
    package_dir={"vox_tf.datasets": "datasets", "vox_tf.tuner_configs": "tuner_configs"},
    package_data={"vox_tf.datasets.voxel_dataset": ["*.md"],
                  "vox_tf.tuner_configs": ["*.yaml", "*.md"],
                  "vox_tf.ops": ["_build_info.json"]},
    ext_modules=[Extension("vox_tf.ops._vox_ops", sources=_sources())],
    cmdclass={"build_ext": BuildTensorFlowOps},
    install_requires=[line.split("#")[0].strip() for line in
                      (ROOT / "requirements.txt").read_text().splitlines()
                      if line.split("#")[0].strip() and not line.startswith("pytest")],
)
