// CPU kernel of DualVoxelBoundary, and the registration of its CUDA kernel.
//
// The 3x3x3 neighbourhood is separable: "some neighbour is occupied" (dilation) and "every
// neighbour is occupied" (erosion) are each three 1-D passes of width 3. On bit-packed rows
// a pass handles 64 voxels per word operation, so the grid is read and written once each
// and the passes in between cost almost nothing.
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

// One bit per voxel, 64 voxels of a z-row per word, rows padded with empty bits (the
// padding is "outside the grid", which is empty, exactly as the method asks).
struct BitRows {
  int64_t words_per_row;
  std::vector<uint64_t> any, all;
  BitRows(int64_t rows, int64_t nz)
      : words_per_row((nz + 63) / 64), any(rows * words_per_row), all(rows * words_per_row) {}
};

// Along z inside one row: a voxel's neighbours are the bits beside it, carried across words.
void PassAlongZ(const uint64_t* occ, int64_t words, uint64_t* any, uint64_t* all) {
  for (int64_t w = 0; w < words; ++w) {
    const uint64_t self = occ[w];
    const uint64_t before = (self << 1) | (w > 0 ? occ[w - 1] >> 63 : 0);
    const uint64_t after = (self >> 1) | (w < words - 1 ? occ[w + 1] << 63 : 0);
    any[w] = before | self | after;
    all[w] = before & self & after;
  }
}

// Across whole rows (along y or x): a null neighbour is the empty outside of the grid.
void PassAcross(const uint64_t* any_before, const uint64_t* any_self, const uint64_t* any_after,
                const uint64_t* all_before, const uint64_t* all_self, const uint64_t* all_after,
                int64_t words, uint64_t* any, uint64_t* all) {
  for (int64_t w = 0; w < words; ++w) {
    any[w] = any_self[w] | (any_before ? any_before[w] : 0) | (any_after ? any_after[w] : 0);
    all[w] = (all_before && all_after) ? all_self[w] & all_before[w] & all_after[w] : 0;
  }
}

}  // namespace

template <>
struct DualVoxelBoundaryFunctor<CPUDevice> {
  const char* operator()(const CPUDevice& device, const bool* occupancy, const bool* mask,
                         int64_t nx, int64_t ny, int64_t nz, int8_t* labels, int64_t* counts) {
    const int64_t rows = nx * ny;
    BitRows along_z(rows, nz), along_zy(rows, nz), around(rows, nz);
    const int64_t words = along_z.words_per_row;
    std::vector<uint64_t> occupied(rows * words);
    const int64_t slab_words = ny * words;
    auto parallel_slabs = [&](auto fn) {
      device.parallelFor(nx, Eigen::TensorOpCost(ny * nz, ny * nz, 8 * ny * nz),
                         [&](Eigen::Index begin, Eigen::Index end) { fn(begin, end); });
    };
    // Pack, then the z pass and the y pass: both stay inside an x-slab.
    parallel_slabs([&](int64_t begin, int64_t end) {
      for (int64_t row = begin * ny; row < end * ny; ++row) {
        uint64_t* bits = &occupied[row * words];
        const bool* in = occupancy + row * nz;
        for (int64_t k = 0; k < nz; ++k) bits[k >> 6] |= uint64_t{in[k]} << (k & 63);
        PassAlongZ(bits, words, &along_z.any[row * words], &along_z.all[row * words]);
      }
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < ny; ++j) {
          const int64_t self = i * slab_words + j * words;
          const int64_t before = j > 0 ? self - words : -1;
          const int64_t after = j < ny - 1 ? self + words : -1;
          PassAcross(before >= 0 ? &along_z.any[before] : nullptr, &along_z.any[self],
                     after >= 0 ? &along_z.any[after] : nullptr,
                     before >= 0 ? &along_z.all[before] : nullptr, &along_z.all[self],
                     after >= 0 ? &along_z.all[after] : nullptr, words, &along_zy.any[self],
                     &along_zy.all[self]);
        }
      }
    });
    // The x pass reads the neighbouring slabs, then every voxel of the slab gets its label.
    std::atomic<int64_t> totals[4] = {0, 0, 0, 0};
    parallel_slabs([&](int64_t begin, int64_t end) {
      int64_t local[4] = {0, 0, 0, 0};
      for (int64_t i = begin; i < end; ++i) {
        const int64_t self = i * slab_words;
        const int64_t before = i > 0 ? self - slab_words : -1;
        const int64_t after = i < nx - 1 ? self + slab_words : -1;
        PassAcross(before >= 0 ? &along_zy.any[before] : nullptr, &along_zy.any[self],
                   after >= 0 ? &along_zy.any[after] : nullptr,
                   before >= 0 ? &along_zy.all[before] : nullptr, &along_zy.all[self],
                   after >= 0 ? &along_zy.all[after] : nullptr, slab_words, &around.any[self],
                   &around.all[self]);
        for (int64_t j = 0; j < ny; ++j) {
          const uint64_t* any = &around.any[self + j * words];
          const uint64_t* all = &around.all[self + j * words];
          const int64_t first = (i * ny + j) * nz;
          for (int64_t k = 0; k < nz; ++k) {
            const int any_bit = (any[k >> 6] >> (k & 63)) & 1;
            const int all_bit = (all[k >> 6] >> (k & 63)) & 1;
            // occupied ? (all ? kInside : kInnerBoundary) : (any ? kOuterBoundary : kOutside),
            // and kOutside off the mask, without branches.
            const int8_t label =
                (mask ? mask[first + k] : 1) *
                (occupancy[first + k] ? 3 - 2 * all_bit : 2 * any_bit);
            labels[first + k] = label;
            ++local[label];
          }
        }
      }
      for (int c = 0; c < 4; ++c) totals[c] += local[c];
    });
    for (int c = 0; c < 4; ++c) counts[c] = totals[c];
    return nullptr;
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
    // An empty mask stands for "no mask", sparing the caller a grid of ones.
    const bool masked = mask.NumElements() > 0;
    OP_REQUIRES(ctx, !masked || mask.shape() == occupancy.shape(),
                InvalidArgument("mask must have the shape of occupancy ",
                                occupancy.shape().DebugString(), ", got ",
                                mask.shape().DebugString()));
    Tensor* labels = nullptr;
    Tensor* counts = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, occupancy.shape(), &labels));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({4}), &counts));
    const char* error = DualVoxelBoundaryFunctor<Device>()(
        ctx->eigen_device<Device>(), occupancy.flat<bool>().data(),
        masked ? mask.flat<bool>().data() : nullptr,
        occupancy.dim_size(0), occupancy.dim_size(1), occupancy.dim_size(2),
        labels->flat<int8_t>().data(), counts->flat<int64_t>().data());
    // Unchecked, a kernel that never ran would hand back whatever the output memory held.
    OP_REQUIRES(ctx, error == nullptr,
                ::tensorflow::errors::Internal(
                    "DualVoxelBoundary: the CUDA kernel could not run: ", error ? error : "",
                    " (rebuild vox_tf with an nvcc that targets this GPU, or run the op on "
                    "the CPU: with tf.device('/CPU:0'))"));
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
