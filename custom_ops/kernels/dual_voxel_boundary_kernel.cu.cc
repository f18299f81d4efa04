// CUDA kernel of DualVoxelBoundary: one thread per voxel reads its 26 neighbours.
// On a GPU the neighbours of a warp share cache lines, so the direct form is bandwidth
// bound already and needs none of the CPU kernel's separable passes. What it must avoid is
// a shared-memory atomic per voxel: four addresses for a whole block serialise it. Each
// thread counts in registers and a warp sums by shuffles, one atomic per warp and label.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "dual_voxel_boundary.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <limits>

#include "unsupported/Eigen/CXX11/Tensor"

namespace vox_tf {
namespace {

constexpr int kThreads = 256;

// Index is int32_t whenever the grid allows: 64-bit division costs several times more.
template <typename Index>
__global__ void __launch_bounds__(kThreads)
    DualVoxelBoundaryKernel(const bool* occupancy, const bool* mask, Index nx, Index ny,
                            Index nz, int8_t* labels, unsigned long long* counts) {
  __shared__ unsigned long long block_counts[4];
  if (threadIdx.x < 4) block_counts[threadIdx.x] = 0;
  __syncthreads();
  unsigned long long thread_counts[4] = {0, 0, 0, 0};
  const Index n = nx * ny * nz;
  for (Index q = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; q < n;
       q += static_cast<Index>(blockDim.x) * gridDim.x) {
    const Index row = q / nz, k = q - row * nz;
    const Index i = row / ny, j = row - i * ny;
    int8_t label = kOutside;
    if (mask == nullptr || mask[q]) {
      const bool occupied = occupancy[q];
      bool any = false, all = true;
      for (int di = -1; di <= 1; ++di) {
        for (int dj = -1; dj <= 1; ++dj) {
          for (int dk = -1; dk <= 1; ++dk) {
            const Index a = i + di, b = j + dj, c = k + dk;
            const bool inside_grid = a >= 0 && a < nx && b >= 0 && b < ny && c >= 0 && c < nz;
            const bool neighbour = inside_grid && occupancy[(a * ny + b) * nz + c];
            any |= neighbour;
            all &= neighbour;
          }
        }
      }
      if (occupied) {
        label = all ? kInside : kInnerBoundary;
      } else {
        label = any ? kOuterBoundary : kOutside;
      }
    }
    labels[q] = label;
#pragma unroll
    for (int c = 0; c < 4; ++c) thread_counts[c] += label == c;
  }
  // Every thread of the block gets here (kThreads is a multiple of 32), as the full-warp
  // shuffles need.
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    unsigned long long sum = thread_counts[c];
    for (int offset = 16; offset > 0; offset /= 2) {
      sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (threadIdx.x % 32 == 0 && sum != 0) atomicAdd(&block_counts[c], sum);
  }
  __syncthreads();
  if (threadIdx.x < 4) atomicAdd(&counts[threadIdx.x], block_counts[threadIdx.x]);
}

}  // namespace

template <>
const char* DualVoxelBoundaryFunctor<Eigen::GpuDevice>::operator()(
    const Eigen::GpuDevice& device, const bool* occupancy, const bool* mask, int64_t nx,
    int64_t ny, int64_t nz, int8_t* labels, int64_t* counts) {
  cudaError_t status = cudaMemsetAsync(counts, 0, 4 * sizeof(int64_t), device.stream());
  if (status != cudaSuccess) return cudaGetErrorString(status);
  const int64_t n = nx * ny * nz;
  if (n == 0) return nullptr;
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
  auto* totals = reinterpret_cast<unsigned long long*>(counts);
  // The loop index runs up to n plus one stride: that too must fit the narrow type.
  if (n + int64_t{kThreads} * blocks <= std::numeric_limits<int32_t>::max()) {
    DualVoxelBoundaryKernel<int32_t><<<blocks, kThreads, 0, device.stream()>>>(
        occupancy, mask, nx, ny, nz, labels, totals);
  } else {
    DualVoxelBoundaryKernel<int64_t><<<blocks, kThreads, 0, device.stream()>>>(
        occupancy, mask, nx, ny, nz, labels, totals);
  }
  // A launch fails here, synchronously, when no kernel image suits the GPU.
  status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace vox_tf
#endif  // GOOGLE_CUDA
