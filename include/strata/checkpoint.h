// strata/checkpoint.h — crash-safe checkpoints of a training run (strata/trainer.h), one rank or many:
// the full state, wherever the optimizer keeps it (device, pinned host memory or NVMe swap).
//
// A checkpoint is a directory DIR/step-NNNNNNNN holding
//   manifest.json    format and version, the step, the optimizer's update count, the loss
//                    scaler's state, the data position and the RNG (see below), the model's
//                    dimensions and dtypes, every parameter (name, elements, offset), the
//                    grid, ZeRO stage and offload that saved it ("saved_by", for reading:
//                    any grid resumes any checkpoint), and every file with its size and
//                    CRC-32C;
//   master.f32, exp_avg.f32, exp_avg_sq.f32
//                    the optimizer tensors of every parameter in model order, little-endian fp32.
// Saving writes everything into DIR/.step-NNNNNNNN.tmp-<pid>, fsyncs each file and the
// directory, renames the directory into place and fsyncs DIR; only then are older checkpoints
// beyond `keep` removed. A save killed at any point leaves at most a temporary directory,
// which loading ignores and the next save removes, so the previous checkpoint stays intact.
//
// Data position and RNG: sampling is a pure function of (step, micro-step, row) (strata/data.h)
// and initialisation a counter-based generator keyed by the seed; nothing else is random, so
// the step and the seed are the whole of both. Resuming gives the same next steps as a run that
// was never interrupted, bit for bit where the kernels are deterministic.
//
// Loading refuses, naming the file and the problem, a checkpoint whose manifest is missing or
// malformed, whose files are missing, of the wrong size or fail their checksum (all verified
// before any state is touched), or that belongs to another model (dimensions, dtype,
// parameter names and sizes) or optimizer type.
//
// Thread-safety: one call at a time per Trainer.
#pragma once

#include <cstdint>
#include <string>

#include "strata/profile.h"
#include "strata/status.h"
#include "strata/trainer.h"

namespace strata {

struct CheckpointOptions {
  int keep = 2;  // complete checkpoints kept in the directory (the newest ones); at least 1
};

// Saves `trainer`'s state as DIR/step-<steps_done>; returns that path. DIR is created if
// needed. Errors (full disk, permissions) name the file; the previous checkpoints stay intact.
// With ZeRO stages 1 to 3 and more than one rank (Trainer::zero_stage) the save is a collective of the data-parallel
// group, every rank calling it: each rank writes its own shard at its global offsets and
// fsyncs, and rank 0 writes the manifest and renames the directory into place only after every
// rank's part is complete (src/engine/checkpoint_sharded.cc); DIR must be reachable by every
// rank. With tensor or pipeline parallelism (Trainer::tp_group, pp_group) every rank calls it
// too: each whole tensor is gathered over the dp, tp and pp groups and global rank 0 writes a
// one-rank checkpoint, which any grid resumes. Otherwise every rank holds the whole state and one rank (global rank 0)
// saves.
// Loading is per rank, whatever the world size that saved: each rank takes its own elements.
Result<std::string> save_checkpoint(Trainer& trainer, const std::string& dir, const CheckpointOptions& options = {});

// Restores `trainer` from `path`: a checkpoint directory (holding manifest.json) or a directory
// of them (the newest complete one is used). Returns the checkpoint's path.
Result<std::string> load_checkpoint(Trainer& trainer, const std::string& path);

// A checkpoint's manifest (`strata checkpoint info` and `verify`): `path` a checkpoint
// directory or a directory of them (the newest complete one). Checks the manifest and that
// every file it lists has its size; with `verify_checksums` re-reads every file against its
// CRC-32C too. Errors name the file and the problem, as loading does. No state is touched;
// `manifest` is the manifest as JSON text, with "saved_by" naming the grid (dp, tp, pp), the
// ZeRO stage and the offload that saved it.
struct CheckpointManifest {
  std::string path;      // the checkpoint directory read
  std::string manifest;  // JSON
  bool checksums_verified = false;
};
Result<CheckpointManifest> read_checkpoint_manifest(const std::string& path, bool verify_checksums);
// "step-NNNNNNNN": the name of the checkpoint of `step` inside its directory.
std::string checkpoint_name(std::int64_t step);

// The newest complete checkpoint in DIR; not_found when there is none.
Result<std::string> latest_checkpoint(const std::string& dir);

// Whether a checkpoint is due after `steps_done` steps: every train.checkpoint_every steps,
// and at the end (`last`) of a run with a train.checkpoint_dir.
bool checkpoint_due(const TrainConfig& train, std::int64_t steps_done, bool last);

}  // namespace strata
