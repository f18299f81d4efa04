// CPU kernel of DualVoxelBoundary, and the registration of its CUDA kernel.
//
// The 3x3x3 neighbourhood is separable: "some neighbour is occupied" (dilation) and "every
// neighbour is occupied" (erosion) are each three 1-D passes of width 3. Both ride in one
// byte per voxel (bit 0: any occupied, bit 1: all occupied), so three streaming passes over
// the grid replace 26 random reads per voxel.
#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include "dual_voxel_boundary.h"

#include <atomic>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace vox_tf {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using CPUDevice = Eigen::ThreadPoolDevice;

namespace {

constexpr uint8_t kAny = 1, kAll = 2;

// Combines a voxel with its two neighbours along one axis; a neighbour outside the grid is
// passed as 0 (empty): it adds nothing to "any" and breaks "all".
inline uint8_t Combine(uint8_t before, uint8_t self, uint8_t after) {
  return ((before | self | after) & kAny) | (before & self & after & kAll);
}

// Width-3 pass along z: inside each row of nz voxels.
void PassAlongRows(const uint8_t* in, uint8_t* out, int64_t rows, int64_t nz) {
  for (int64_t row = 0; row < rows; ++row, in += nz, out += nz) {
    if (nz == 1) {
      out[0] = Combine(0, in[0], 0);
      continue;
    }
    out[0] = Combine(0, in[0], in[1]);
    for (int64_t k = 1; k < nz - 1; ++k) out[k] = Combine(in[k - 1], in[k], in[k + 1]);
    out[nz - 1] = Combine(in[nz - 2], in[nz - 1], 0);
  }
}

// Width-3 pass across rows of n voxels: out = Combine(before, self, after) element-wise,
// a null `before` or `after` being the empty outside of the grid.
void PassAcrossRows(const uint8_t* before, const uint8_t* self, const uint8_t* after,
                    uint8_t* out, int64_t n) {
  if (before && after) {
    for (int64_t k = 0; k < n; ++k) out[k] = Combine(before[k], self[k], after[k]);
  } else if (before) {
    for (int64_t k = 0; k < n; ++k) out[k] = Combine(before[k], self[k], 0);
  } else if (after) {
    for (int64_t k = 0; k < n; ++k) out[k] = Combine(0, self[k], after[k]);
  } else {
    for (int64_t k = 0; k < n; ++k) out[k] = Combine(0, self[k], 0);
  }
}

}  // namespace

template <>
struct DualVoxelBoundaryFunctor<CPUDevice> {
  void operator()(const CPUDevice& device, const bool* occupancy, const bool* mask, int64_t nx,
                  int64_t ny, int64_t nz, int8_t* labels, int64_t* counts) {
    const int64_t slab = ny * nz, n = nx * slab;
    std::vector<uint8_t> a(n), b(n);
    auto parallel_slabs = [&](auto fn) {
      device.parallelFor(nx, Eigen::TensorOpCost(slab, slab, 4 * slab),
                         [&](Eigen::Index begin, Eigen::Index end) { fn(begin, end); });
    };
    // Along z, then along y: the neighbours stay inside each x-slab.
    parallel_slabs([&](int64_t begin, int64_t end) {
      for (int64_t q = begin * slab; q < end * slab; ++q) b[q] = occupancy[q] ? kAny | kAll : 0;
      PassAlongRows(b.data() + begin * slab, a.data() + begin * slab, (end - begin) * ny, nz);
      for (int64_t i = begin; i < end; ++i) {
        const uint8_t* in = a.data() + i * slab;
        for (int64_t j = 0; j < ny; ++j) {
          PassAcrossRows(j > 0 ? in + (j - 1) * nz : nullptr, in + j * nz,
                         j < ny - 1 ? in + (j + 1) * nz : nullptr, b.data() + i * slab + j * nz,
                         nz);
        }
      }
    });
    std::atomic<int64_t> totals[4] = {0, 0, 0, 0};
    parallel_slabs([&](int64_t begin, int64_t end) {
      int64_t local[4] = {0, 0, 0, 0};
      for (int64_t i = begin; i < end; ++i) {
        // Along x: the slabs before and after, read from b, written into this slab of a.
        PassAcrossRows(i > 0 ? b.data() + (i - 1) * slab : nullptr, b.data() + i * slab,
                       i < nx - 1 ? b.data() + (i + 1) * slab : nullptr, a.data() + i * slab,
                       slab);
        for (int64_t q = i * slab; q < (i + 1) * slab; ++q) {
          const uint8_t around = a[q];
          // Branch-free form of: occupied ? (all ? kInside : kInnerBoundary)
          //                                : (any ? kOuterBoundary : kOutside), 0 off the mask.
          const int8_t label =
              mask[q] * (occupancy[q] ? 3 - (around & kAll) : 2 * (around & kAny));
          labels[q] = label;
          ++local[label];
        }
      }
      for (int c = 0; c < 4; ++c) totals[c] += local[c];
    });
    for (int c = 0; c < 4; ++c) counts[c] = totals[c];
  }
};

namespace {

template <typename Device>
class DualVoxelBoundaryOp : public OpKernel {
 public:
  explicit DualVoxelBoundaryOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& occupancy = ctx->input(0);
    const Tensor& mask = ctx->input(1);
    OP_REQUIRES(ctx, occupancy.dims() == 3,
                InvalidArgument("occupancy must be a 3-D grid, got shape ",
                                occupancy.shape().DebugString()));
    OP_REQUIRES(ctx, mask.shape() == occupancy.shape(),
                InvalidArgument("mask must have the shape of occupancy ",
                                occupancy.shape().DebugString(), ", got ",
                                mask.shape().DebugString()));
    Tensor* labels = nullptr;
    Tensor* counts = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, occupancy.shape(), &labels));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({4}), &counts));
    DualVoxelBoundaryFunctor<Device>()(
        ctx->eigen_device<Device>(), occupancy.flat<bool>().data(), mask.flat<bool>().data(),
        occupancy.dim_size(0), occupancy.dim_size(1), occupancy.dim_size(2),
        labels->flat<int8_t>().data(), counts->flat<int64_t>().data());
  }
};

REGISTER_KERNEL_BUILDER(Name("DualVoxelBoundary").Device(::tensorflow::DEVICE_CPU),
                        DualVoxelBoundaryOp<CPUDevice>);

#if GOOGLE_CUDA
REGISTER_KERNEL_BUILDER(Name("DualVoxelBoundary").Device(::tensorflow::DEVICE_GPU),
                        DualVoxelBoundaryOp<Eigen::GpuDevice>);
#endif

}  // namespace

}  // namespace vox_tf
