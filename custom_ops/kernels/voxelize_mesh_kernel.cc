// CPU kernel of VoxelizeMesh.
//
// Each triangle visits only the voxels of its bounding box and runs the separating-axis
// test of Akenine-Moller against each closed voxel box. Hits go into a shared bitmap with
// atomic ORs, so threads over triangles never need a lock and the result does not depend
// on scheduling; the bitmap is then read out in x-major order, which gives sorted, unique
// indices for free.
#include <cmath>
#include <cstdint>
#include <deque>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/core/threadpool.h"

namespace vox_tf {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

constexpr int kMinResolution = 8;
constexpr int kMaxResolution = 1024;

struct Vec3 {
  double x, y, z;
};

inline Vec3 Sub(const Vec3& a, const Vec3& b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
inline Vec3 Cross(const Vec3& a, const Vec3& b) {
  return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}
inline double Dot(const Vec3& a, const Vec3& b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

// True unless `axis` separates the triangle (v0, v1, v2) from the box [-h, h]^3 strictly:
// a triangle that only touches the closed box is not separated.
inline bool OverlapsOnAxis(const Vec3& axis, const Vec3& v0, const Vec3& v1, const Vec3& v2,
                           double h) {
  const double p0 = Dot(axis, v0), p1 = Dot(axis, v1), p2 = Dot(axis, v2);
  const double lo = std::fmin(p0, std::fmin(p1, p2));
  const double hi = std::fmax(p0, std::fmax(p1, p2));
  const double radius = h * (std::fabs(axis.x) + std::fabs(axis.y) + std::fabs(axis.z));
  return !(lo > radius || hi < -radius);
}

// Triangle (in grid units, already translated so the box centre is the origin) against
// the closed box [-h, h]^3, over all 13 candidate separating axes.
bool TriangleOverlapsBox(const Vec3& v0, const Vec3& v1, const Vec3& v2, double h) {
  const Vec3 edges[3] = {Sub(v1, v0), Sub(v2, v1), Sub(v0, v2)};
  const Vec3 units[3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}};
  for (const Vec3& u : units) {
    if (!OverlapsOnAxis(u, v0, v1, v2, h)) return false;
  }
  if (!OverlapsOnAxis(Cross(edges[0], edges[1]), v0, v1, v2, h)) return false;
  for (const Vec3& u : units) {
    for (const Vec3& e : edges) {
      if (!OverlapsOnAxis(Cross(u, e), v0, v1, v2, h)) return false;
    }
  }
  return true;
}

class Bitmap {
 public:
  explicit Bitmap(int64_t bits) : words_((bits + 63) / 64, 0) {}
  void AtomicSet(int64_t bit) {
    __atomic_fetch_or(&words_[bit >> 6], uint64_t{1} << (bit & 63), __ATOMIC_RELAXED);
  }
  void Set(int64_t bit) { words_[bit >> 6] |= uint64_t{1} << (bit & 63); }
  bool Get(int64_t bit) const { return (words_[bit >> 6] >> (bit & 63)) & 1; }

  // Calls fn(bit) for every set bit in [begin, end), in increasing order, a word at a time
  // so that the mostly empty grid costs little to read out.
  template <typename Fn>
  void ForEachSet(int64_t begin, int64_t end, Fn fn) const {
    for (int64_t w = begin >> 6; w <= (end - 1) >> 6 && begin < end; ++w) {
      uint64_t word = words_[w];
      if (w == begin >> 6) word &= ~uint64_t{0} << (begin & 63);
      if (w == (end - 1) >> 6 && (end & 63)) word &= ~(~uint64_t{0} << (end & 63));
      while (word) {
        fn((w << 6) + __builtin_ctzll(word));
        word &= word - 1;
      }
    }
  }

 private:
  std::vector<uint64_t> words_;
};

// Marks every voxel of the triangle's bounding box that the triangle touches.
void VoxelizeTriangle(const float* a, const float* b, const float* c, int r, Bitmap* grid) {
  // Grid units: voxel i spans [i, i + 1]. Double precision keeps the products of float32
  // inputs (nearly) exact, so triangles lying on voxel faces are decided exactly.
  const double to_grid = 0.5 * r;
  const Vec3 g[3] = {{(a[0] + 1.0) * to_grid, (a[1] + 1.0) * to_grid, (a[2] + 1.0) * to_grid},
                     {(b[0] + 1.0) * to_grid, (b[1] + 1.0) * to_grid, (b[2] + 1.0) * to_grid},
                     {(c[0] + 1.0) * to_grid, (c[1] + 1.0) * to_grid, (c[2] + 1.0) * to_grid}};
  int lo[3], hi[3];
  for (int axis = 0; axis < 3; ++axis) {
    const double* v0 = &g[0].x + axis;
    const double* v1 = &g[1].x + axis;
    const double* v2 = &g[2].x + axis;
    const double mn = std::fmin(*v0, std::fmin(*v1, *v2));
    const double mx = std::fmax(*v0, std::fmax(*v1, *v2));
    // A closed box [i, i+1] touched at its upper face still counts, hence ceil - 1.
    lo[axis] = static_cast<int>(std::fmax(0.0, std::ceil(mn) - 1.0));
    hi[axis] = static_cast<int>(std::fmin(r - 1.0, std::floor(mx)));
    if (lo[axis] > hi[axis]) return;
  }
  for (int i = lo[0]; i <= hi[0]; ++i) {
    for (int j = lo[1]; j <= hi[1]; ++j) {
      for (int k = lo[2]; k <= hi[2]; ++k) {
        const Vec3 centre = {i + 0.5, j + 0.5, k + 0.5};
        if (TriangleOverlapsBox(Sub(g[0], centre), Sub(g[1], centre), Sub(g[2], centre), 0.5)) {
          grid->AtomicSet((static_cast<int64_t>(i) * r + j) * r + k);
        }
      }
    }
  }
}

// Voxels that empty space cannot reach from the border (6-connected) become occupied.
void FillEnclosed(int r, Bitmap* grid) {
  const int64_t n = static_cast<int64_t>(r) * r * r;
  Bitmap outside(n);
  // A deque frees its blocks as the front advances: memory follows the frontier, not R^3.
  std::deque<int64_t> frontier;
  auto visit = [&](int64_t v) {
    if (!grid->Get(v) && !outside.Get(v)) {
      outside.Set(v);
      frontier.push_back(v);
    }
  };
  for (int i = 0; i < r; ++i) {
    for (int j = 0; j < r; ++j) {
      for (int k = 0; k < r; ++k) {
        if (i == 0 || j == 0 || k == 0 || i == r - 1 || j == r - 1 || k == r - 1) {
          visit((static_cast<int64_t>(i) * r + j) * r + k);
        }
      }
    }
  }
  const int64_t strides[3] = {static_cast<int64_t>(r) * r, r, 1};
  while (!frontier.empty()) {
    const int64_t v = frontier.front();
    frontier.pop_front();
    const int64_t coords[3] = {v / strides[0], (v / r) % r, v % r};
    for (int axis = 0; axis < 3; ++axis) {
      if (coords[axis] > 0) visit(v - strides[axis]);
      if (coords[axis] < r - 1) visit(v + strides[axis]);
    }
  }
  for (int64_t v = 0; v < n; ++v) {
    if (!outside.Get(v)) grid->Set(v);
  }
}

class VoxelizeMeshOp : public OpKernel {
 public:
  explicit VoxelizeMeshOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("resolution", &resolution_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("fill", &fill_));
    OP_REQUIRES(ctx, resolution_ >= kMinResolution && resolution_ <= kMaxResolution,
                InvalidArgument("resolution must be in [", kMinResolution, ", ", kMaxResolution,
                                "], got ", resolution_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& vertices = ctx->input(0);
    const Tensor& faces = ctx->input(1);
    OP_REQUIRES(ctx, vertices.dims() == 2 && vertices.dim_size(1) == 3,
                InvalidArgument("vertices must be [V, 3], got ", vertices.shape().DebugString()));
    OP_REQUIRES(ctx, faces.dims() == 2 && faces.dim_size(1) == 3,
                InvalidArgument("faces must be [F, 3], got ", faces.shape().DebugString()));
    const int64_t num_vertices = vertices.dim_size(0);
    const int64_t num_faces = faces.dim_size(0);
    const float* v = vertices.flat<float>().data();
    const int32_t* f = faces.flat<int32_t>().data();
    for (int64_t n = 0; n < 3 * num_vertices; ++n) {
      OP_REQUIRES(ctx, std::isfinite(v[n]),
                  InvalidArgument("vertex ", n / 3, " is not finite (NaN or inf)"));
    }
    for (int64_t n = 0; n < 3 * num_faces; ++n) {
      OP_REQUIRES(ctx, f[n] >= 0 && f[n] < num_vertices,
                  InvalidArgument("face ", n / 3, " indexes vertex ", f[n], ", outside [0, ",
                                  num_vertices, ")"));
    }

    const int r = resolution_;
    Bitmap grid(static_cast<int64_t>(r) * r * r);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(num_faces, /*cost_per_unit=*/2000, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        VoxelizeTriangle(v + 3 * f[3 * t], v + 3 * f[3 * t + 1], v + 3 * f[3 * t + 2], r, &grid);
      }
    });
    if (fill_) FillEnclosed(r, &grid);

    // Read the bitmap out slab by slab: count, prefix-sum, then write in parallel.
    const int64_t slab = static_cast<int64_t>(r) * r;
    std::vector<int64_t> offsets(r + 1, 0);
    pool->ParallelFor(r, slab, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        int64_t count = 0;
        grid.ForEachSet(i * slab, (i + 1) * slab, [&](int64_t) { ++count; });
        offsets[i + 1] = count;
      }
    });
    for (int i = 0; i < r; ++i) offsets[i + 1] += offsets[i];
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({offsets[r], 3}), &output));
    int32_t* out = output->flat<int32_t>().data();
    pool->ParallelFor(r, slab, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        int32_t* row = out + 3 * offsets[i];
        grid.ForEachSet(i * slab, (i + 1) * slab, [&](int64_t q) {
          q -= i * slab;
          *row++ = static_cast<int32_t>(i);
          *row++ = static_cast<int32_t>(q / r);
          *row++ = static_cast<int32_t>(q % r);
        });
      }
    });
  }

 private:
  int resolution_;
  bool fill_;
};

REGISTER_KERNEL_BUILDER(Name("VoxelizeMesh").Device(::tensorflow::DEVICE_CPU), VoxelizeMeshOp);

}  // namespace
}  // namespace vox_tf
