// src/parallel/process_grid.h — the dp x pp x tp grid over a world of ranks.
//
// Megatron-LM's order: tp varies fastest, then dp, then pp, so
//   rank = tp_index + tp * (dp_index + dp * pp_index)
// and the tp group of a rank is its neighbours (on a cluster they share a node, where the
// bandwidth is). Each dimension has its own communicator (split from the world): the ranks
// that differ only in that coordinate, ordered by it. The previous and next pipeline stages of
// a rank are the ranks of its pp group one stage before and after (none at the ends).
//
// Thread-safety: a ProcessGrid is built by all ranks together and then read-only; its
// communicators follow their own rules.
#pragma once

#include <memory>
#include <string>

#include "strata/communicator.h"

namespace strata::parallel {

struct GridShape {
  int dp = 1;
  int tp = 1;
  int pp = 1;
  int ranks() const { return dp * tp * pp; }
  std::string to_string() const;  // "dp 2 x tp 1 x pp 2"
  bool operator==(const GridShape&) const = default;
};

struct GridCoord {
  int dp = 0;
  int pp = 0;
  int tp = 0;
  bool operator==(const GridCoord&) const = default;
};

GridCoord grid_coord(int rank, const GridShape& shape);
int grid_rank(const GridCoord& c, const GridShape& shape);

class ProcessGrid {
 public:
  // Collective over `world`: every rank calls it with the same shape. Fails when the world
  // size is not dp x tp x pp (naming both), or a dimension is below 1.
  static Result<std::unique_ptr<ProcessGrid>> create(Communicator& world, const GridShape& shape);

  const GridShape& shape() const { return shape_; }
  const GridCoord& coord() const { return coord_; }
  int rank() const { return world_->rank(); }
  // The node this rank is on (the world communicator's node; MPI's shared-memory split).
  int node() const { return world_->node(); }

  Communicator& world() const { return *world_; }
  Communicator& dp() const { return *dp_; }
  Communicator& tp() const { return *tp_; }
  Communicator& pp() const { return *pp_; }

  // World ranks of the neighbouring pipeline stages, or -1 at the ends.
  int prev_stage() const;
  int next_stage() const;

 private:
  ProcessGrid() = default;

  GridShape shape_;
  GridCoord coord_;
  Communicator* world_ = nullptr;
  std::unique_ptr<Communicator> dp_, tp_, pp_;
};

}  // namespace strata::parallel
