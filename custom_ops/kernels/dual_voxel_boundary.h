// DualVoxelBoundary functor, shared by the CPU kernel and the CUDA kernel.
#ifndef VOX_TF_DUAL_VOXEL_BOUNDARY_H_
#define VOX_TF_DUAL_VOXEL_BOUNDARY_H_

#include <cstdint>

namespace vox_tf {

enum DualVoxelLabel : int8_t { kOutside = 0, kInside = 1, kOuterBoundary = 2, kInnerBoundary = 3 };

// Fills labels [nx, ny, nz] (row-major, z fastest) and counts [4] from occupancy and mask
// (null: no mask). Every pointer lives in the Device's memory. Returns null, or why the work
// could not be started (a GPU the kernel was not built for, say).
template <typename Device>
struct DualVoxelBoundaryFunctor {
  const char* operator()(const Device& device, const bool* occupancy, const bool* mask,
                         int64_t nx, int64_t ny, int64_t nz, int8_t* labels, int64_t* counts);
};

}  // namespace vox_tf

#endif  // VOX_TF_DUAL_VOXEL_BOUNDARY_H_
