// src/engine/pipeline.h — runs one pipeline stage's instructions of a training step
// (src/parallel/pipeline_schedule.h) on a Trainer's model chunks.
//
// Memory. Each of the stage's chunks keeps one activation slot per micro-batch it holds at
// once, as many as the schedule's peak for that chunk (peak_units_per_chunk: m for GPipe,
// min(p - r, m) at stage r for 1F1B), all allocated with the model's activations and so charged
// to the device budget. A micro-batch takes a free slot of its chunk at its load, receive or
// forward, whichever comes first, and frees it after its backward (zero-bubble: after its
// weight-gradient half). The tokens of every micro-batch of the step have their own device and
// pinned host buffers.
//
// Streams and transfers. Compute runs on the trainer's stream, in the schedule's order. Each
// kind of transfer has a stream of its own: sends of activations, sends of gradients, each
// waiting for the compute that produced its tensor, so compute never waits for a peer to take
// what it sent; and receives of activations, receives of gradients, each posted as soon as its
// slot is free (its previous micro-batch's backward done and its sends gone), long before the
// compute that needs it, which waits for its arrival only where the schedule places the
// receive. Every channel's transfers are tagged by micro-batch and model part (Instr::tag) and
// matched by tag, so two transfers in flight between the same stages cannot cross; each
// stream keeps the schedule's order of its kind, which the validator checked matches the
// peer's.
//
// Timing. With `timestamps`, the stream records host timestamps around each compute
// instruction (two host functions per instruction), from which the stage's idle fraction is
// measured as the simulator defines it.
//
// Thread-safety: one thread at a time (the trainer's).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "parallel/pipeline_schedule.h"
#include "strata/communicator.h"
#include "strata/device.h"
#include "strata/model.h"
#include "strata/profile.h"
#include "strata/trainer.h"

namespace strata::engine {

// The schedule a profile runs on `stages` stages: parallel.schedule with train.grad_accum
// micro-batches and parallel.virtual_stages chunks.
Result<pipeline::Schedule> schedule_of(const Profile& profile, int stages);

class PipelineStage {
 public:
  // What one step needs from the trainer.
  struct Step {
    // Fills micro-batch `micro`'s token ids and targets (B T each).
    std::function<Status(int micro, std::span<std::int32_t> tokens, std::span<std::int32_t> targets)> load;
    // Enqueue on the stream: the tied embedding's reduction, and the gradients' (kReduceTied,
    // kReduceGrads).
    std::function<Status()> reduce_tied;
    std::function<Status()> reduce_grads;
    DeviceView loss_sum;      // the head's stage adds loss_weight x each micro-batch's mean loss
    float loss_weight = 1.0f;
    float dloss = 1.0f;       // backward's seed: loss scale / (micro-batches x dp)
  };

  // The stage `pp.rank()` of `schedule`, running `model` (created for that stage, not yet
  // prepared) on `stream`. micro_batch x seq_len tokens per micro-batch.
  // REQUIRES: model, device, pp and stream outlive this object.
  static Result<std::unique_ptr<PipelineStage>> create(pipeline::Schedule schedule, Gpt& model, Device& device,
                                                       Communicator& pp, Stream& stream, int micro_batch, int seq_len);
  ~PipelineStage();

  // The activation slots the model must be prepared with.
  const StageSlots& slots() const { return slots_; }
  // Device bytes of the step's token buffers (every micro-batch's tokens and targets).
  std::uint64_t batch_bytes() const { return batches_.size(); }
  const pipeline::Schedule& schedule() const { return schedule_; }
  int stage() const { return stage_; }

  // Enqueues every instruction of the stage's list but the optimizer step, in order; returns
  // once they are enqueued (the stream then holds the step's work up to the reduced gradients).
  Status run(const Step& step);

  // Record timestamps of the compute instructions from the next run() on.
  void set_timestamps(bool on) { timestamps_ = on; }
  // The latest run's compute instructions with their times (once the stream has synchronized).
  std::vector<PipelineTime> timeline() const { return *times_; }

 private:
  PipelineStage() = default;
  struct SlotState {
    int unit = -1;  // micro * chunks + chunk holding it, -1 when free
    std::unique_ptr<Event> sent[2];     // after the latest send of its activation, of its gradient
    std::unique_ptr<Event> arrived[2];  // after the latest receive of its activation, of its gradient
    std::unique_ptr<Event> freed;       // on the compute stream, where its last micro-batch let it go
  };
  Result<int> slot_of(int micro, int chunk);
  Status acquire(int micro, int chunk);
  Status release(int micro, int chunk);
  Status execute(const pipeline::Instr& in, const Step& step);
  Status load(int micro, const Step& step);
  Status send(const pipeline::Instr& in, DeviceView what, Stream& on);
  Status receive(const pipeline::Instr& in, DeviceView into, Stream& on);
  SlotState& state(int chunk, int slot) {
    return slot_state_[static_cast<std::size_t>(chunk)][static_cast<std::size_t>(slot)];
  }
  Status timed(const pipeline::Instr& in, const std::function<Status()>& work);

  pipeline::Schedule schedule_;
  int stage_ = 0;
  Gpt* model_ = nullptr;
  Device* device_ = nullptr;
  Communicator* pp_ = nullptr;
  Stream* stream_ = nullptr;
  std::unique_ptr<Stream> to_next_, to_prev_;  // sends of activations, of gradients
  std::unique_ptr<Stream> acts_in_, grads_in_;  // receives of activations, of gradients
  std::unique_ptr<Event> ready_;
  StageSlots slots_;
  std::vector<std::vector<SlotState>> slot_state_;  // [chunk][slot]
  std::vector<int> slot_of_unit_;                   // [micro * chunks + chunk] -> slot, -1 none
  std::size_t tokens_ = 0;                          // B T
  DeviceBuffer batches_;                            // [micro] (tokens, targets) int32
  PinnedBuffer staging_;                            // the same in host memory
  bool timestamps_ = false;
  std::shared_ptr<std::vector<PipelineTime>> times_;
};

}  // namespace strata::engine
