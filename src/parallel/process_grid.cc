#include "parallel/process_grid.h"

namespace strata::parallel {

std::string GridShape::to_string() const {
  return "dp " + std::to_string(dp) + " x tp " + std::to_string(tp) + " x pp " + std::to_string(pp);
}

GridCoord grid_coord(int rank, const GridShape& s) {
  return GridCoord{(rank / s.tp) % s.dp, rank / (s.tp * s.dp), rank % s.tp};
}

int grid_rank(const GridCoord& c, const GridShape& s) { return c.tp + s.tp * (c.dp + s.dp * c.pp); }

Result<std::unique_ptr<ProcessGrid>> ProcessGrid::create(Communicator& world, const GridShape& shape) {
  if (shape.dp < 1 || shape.tp < 1 || shape.pp < 1) {
    return invalid_argument("process grid " + shape.to_string() + ": every dimension must be at least 1");
  }
  if (shape.ranks() != world.size()) {
    return invalid_argument("process grid " + shape.to_string() + " needs " + std::to_string(shape.ranks()) +
                            " ranks; the job has " + std::to_string(world.size()) +
                            " (set parallel.dp, tp and pp so that dp x tp x pp is the number of ranks)");
  }
  std::unique_ptr<ProcessGrid> g(new ProcessGrid());
  g->shape_ = shape;
  g->world_ = &world;
  g->coord_ = grid_coord(world.rank(), shape);
  const GridCoord& c = g->coord_;
  // Each split is collective over the world; every rank makes the three in the same order.
  STRATA_ASSIGN_OR_RETURN(g->dp_, world.split(c.pp * shape.tp + c.tp, c.dp));
  STRATA_ASSIGN_OR_RETURN(g->tp_, world.split(c.pp * shape.dp + c.dp, c.tp));
  STRATA_ASSIGN_OR_RETURN(g->pp_, world.split(c.dp * shape.tp + c.tp, c.pp));
  return g;
}

int ProcessGrid::prev_stage() const {
  if (coord_.pp == 0) return -1;
  return grid_rank({coord_.dp, coord_.pp - 1, coord_.tp}, shape_);
}

int ProcessGrid::next_stage() const {
  if (coord_.pp + 1 == shape_.pp) return -1;
  return grid_rank({coord_.dp, coord_.pp + 1, coord_.tp}, shape_);
}

}  // namespace strata::parallel
