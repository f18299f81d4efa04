// Registration of VoxelizeMesh: exact surface voxelization of a triangle mesh.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("VoxelizeMesh")
    .Input("vertices: float32")
    .Input("faces: int32")
    .Attr("resolution: int")
    .Attr("fill: bool = false")
    .Output("indices: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle vertices, faces, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &vertices));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &faces));
      TF_RETURN_IF_ERROR(c->WithValue(c->Dim(vertices, 1), 3, nullptr));
      TF_RETURN_IF_ERROR(c->WithValue(c->Dim(faces, 1), 3, nullptr));
      c->set_output(0, c->Matrix(InferenceContext::kUnknownDim, 3));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Voxels of an R^3 grid over [-1, 1]^3 whose closed box intersects a triangle.

vertices: float32 [V, 3], normalized into [-1, 1]^3 (parts outside are ignored).
faces: int32 [F, 3] indices into vertices.
resolution: R, in [8, 1024].
fill: also mark voxels not reachable from the grid border through empty voxels
  (6-connected), turning a closed surface into a solid.
indices: int32 [N, 3] (i, j, k along x, y, z), sorted lexicographically, unique.
)doc");
