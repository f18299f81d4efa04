// Runs the DualVoxelBoundary CUDA functor (custom_ops/kernels/dual_voxel_boundary_kernel.cu.cc)
// outside TensorFlow, through the same Eigen::GpuDevice the op hands it, so that a GPU machine
// with nvcc but no TensorFlow can check and time it. bench/boundary_cuda.py builds and drives it.
//
//   boundary_cuda_harness GRID LABELS REPEATS
//
// GRID: int64 nx, ny, nz, has_mask, then nx*ny*nz occupancy bytes (0 or 1), then as many mask
// bytes when has_mask is 1. LABELS: written with the labels (int8, row-major) and then the
// counts (int64 [4]) of the last run. Prints "milliseconds MEDIAN MIN" over REPEATS timed runs
// (after 3 untimed ones), each between CUDA events on the functor's stream.
#define EIGEN_USE_GPU

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "dual_voxel_boundary.h"
#include "unsupported/Eigen/CXX11/Tensor"

#define CHECK_CUDA(call)                                                               \
  do {                                                                                 \
    const cudaError_t status = (call);                                                 \
    if (status != cudaSuccess) {                                                       \
      std::fprintf(stderr, "error: %s: %s\n", #call, cudaGetErrorString(status));      \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s GRID LABELS REPEATS\n", argv[0]);
    return 2;
  }
  std::ifstream grid(argv[1], std::ios::binary);
  int64_t header[4];
  grid.read(reinterpret_cast<char*>(header), sizeof header);
  const int64_t nx = header[0], ny = header[1], nz = header[2], n = nx * ny * nz;
  const bool masked = header[3] != 0;
  std::vector<char> host(n * (masked ? 2 : 1));
  grid.read(host.data(), host.size());
  if (!grid) {
    std::fprintf(stderr, "error: %s: shorter than its header says\n", argv[1]);
    return 2;
  }
  const int repeats = std::atoi(argv[3]);

  bool *occupancy = nullptr, *mask = nullptr;
  int8_t* labels = nullptr;
  int64_t* counts = nullptr;
  const size_t bytes = std::max<int64_t>(n, 1);
  CHECK_CUDA(cudaMalloc(&occupancy, bytes));
  CHECK_CUDA(cudaMalloc(&labels, bytes));
  CHECK_CUDA(cudaMalloc(&counts, 4 * sizeof(int64_t)));
  CHECK_CUDA(cudaMemcpy(occupancy, host.data(), n, cudaMemcpyHostToDevice));
  if (masked) {
    CHECK_CUDA(cudaMalloc(&mask, bytes));
    CHECK_CUDA(cudaMemcpy(mask, host.data() + n, n, cudaMemcpyHostToDevice));
  }

  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  Eigen::GpuStreamDevice stream_device(&stream);
  Eigen::GpuDevice device(&stream_device);
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int run = 0; run < 3 + repeats; ++run) {
    // Poisoned before every run: each label and count must be written by the run itself.
    CHECK_CUDA(cudaMemsetAsync(labels, 0x7f, bytes, stream));
    CHECK_CUDA(cudaMemsetAsync(counts, 0x7f, 4 * sizeof(int64_t), stream));
    CHECK_CUDA(cudaEventRecord(start, stream));
    const char* error = vox_tf::DualVoxelBoundaryFunctor<Eigen::GpuDevice>()(
        device, occupancy, mask, nx, ny, nz, labels, counts);
    if (error != nullptr) {
      std::fprintf(stderr, "error: the kernel did not run: %s\n", error);
      return 1;
    }
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float milliseconds = 0;
    CHECK_CUDA(cudaEventElapsedTime(&milliseconds, start, stop));
    if (run >= 3) times.push_back(milliseconds);
  }

  std::vector<char> out(n + 4 * sizeof(int64_t));
  CHECK_CUDA(cudaMemcpy(out.data(), labels, n, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(out.data() + n, counts, 4 * sizeof(int64_t), cudaMemcpyDeviceToHost));
  std::ofstream(argv[2], std::ios::binary).write(out.data(), out.size());
  std::sort(times.begin(), times.end());
  if (!times.empty()) {
    std::printf("milliseconds %.6f %.6f\n", times[times.size() / 2], times.front());
  }
  return 0;
}
