// CUDA kernel of DualVoxelBoundary: one thread per voxel reads its 26 neighbours.
// On a GPU the neighbours of a warp share cache lines, so the direct form is bandwidth
// bound already and needs none of the CPU kernel's separable passes.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include "dual_voxel_boundary.h"

#include <cuda_runtime.h>

#include "unsupported/Eigen/CXX11/Tensor"

namespace vox_tf {
namespace {

__global__ void DualVoxelBoundaryKernel(const bool* occupancy, const bool* mask, int64_t nx,
                                        int64_t ny, int64_t nz, int8_t* labels,
                                        unsigned long long* counts) {
  __shared__ unsigned long long block_counts[4];
  if (threadIdx.x < 4) block_counts[threadIdx.x] = 0;
  __syncthreads();
  const int64_t n = nx * ny * nz;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < n;
       q += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t i = q / (ny * nz), j = (q / nz) % ny, k = q % nz;
    int8_t label = kOutside;
    if (mask == nullptr || mask[q]) {
      const bool occupied = occupancy[q];
      bool any = false, all = true;
      for (int di = -1; di <= 1; ++di) {
        for (int dj = -1; dj <= 1; ++dj) {
          for (int dk = -1; dk <= 1; ++dk) {
            const int64_t a = i + di, b = j + dj, c = k + dk;
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
    atomicAdd(&block_counts[label], 1ULL);
  }
  __syncthreads();
  if (threadIdx.x < 4) atomicAdd(&counts[threadIdx.x], block_counts[threadIdx.x]);
}

}  // namespace

template <>
void DualVoxelBoundaryFunctor<Eigen::GpuDevice>::operator()(
    const Eigen::GpuDevice& device, const bool* occupancy, const bool* mask, int64_t nx,
    int64_t ny, int64_t nz, int8_t* labels, int64_t* counts) {
  cudaMemsetAsync(counts, 0, 4 * sizeof(int64_t), device.stream());
  const int64_t n = nx * ny * nz;
  if (n == 0) return;
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
  DualVoxelBoundaryKernel<<<blocks, kThreads, 0, device.stream()>>>(
      occupancy, mask, nx, ny, nz, labels, reinterpret_cast<unsigned long long*>(counts));
}

}  // namespace vox_tf
#endif  // GOOGLE_CUDA
