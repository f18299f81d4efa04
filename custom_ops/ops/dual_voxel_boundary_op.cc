// Registration of DualVoxelBoundary: inside / outside / inner and outer boundary labels.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("DualVoxelBoundary")
    .Input("occupancy: bool")
    .Input("mask: bool")
    .Output("labels: int8")
    .Output("counts: int64")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle occupancy, mask;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &occupancy));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &mask));
      c->set_output(0, occupancy);
      c->set_output(1, c->Vector(4));
      return ::tensorflow::OkStatus();
    })
    .Doc(R"doc(
Dual-voxel labels over the 26-neighbourhood, outside the grid counted as empty.

occupancy: bool [X, Y, Z].
mask: bool [X, Y, Z]; voxels outside it are labelled 0 (the neighbourhood is still
  read from the whole occupancy). An empty mask ([0, 0, 0]) means no mask.
labels: int8 [X, Y, Z]: 0 outside, 1 inside, 2 outer boundary (empty with an occupied
  neighbour), 3 inner boundary (occupied with an empty neighbour).
counts: int64 [4], the number of voxels of each label.
)doc");
