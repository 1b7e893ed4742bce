// The pipeline stage executor of engine/pipeline.h.
#include "engine/pipeline.h"

#include <algorithm>
#include <chrono>

namespace strata::engine {

using pipeline::Instr;
using pipeline::Op;

Result<pipeline::Schedule> schedule_of(const Profile& profile, int stages) {
  pipeline::PipelineShape shape;
  STRATA_ASSIGN_OR_RETURN(shape.kind, pipeline::parse_schedule(pipeline_schedule_name(profile.parallel.schedule)));
  shape.stages = stages;
  shape.micro_batches = profile.train.grad_accum;
  shape.virtual_stages = profile.parallel.virtual_stages;
  auto s = pipeline::make_schedule(shape);
  if (!s.ok()) return s.status().with_context("parallel.schedule");
  STRATA_RETURN_IF_ERROR(pipeline::validate(*s));
  return s;
}

Result<std::unique_ptr<PipelineStage>> PipelineStage::create(pipeline::Schedule schedule, Gpt& model, Device& device,
                                                             Communicator& pp, Stream& stream, int micro_batch,
                                                             int seq_len) {
  std::unique_ptr<PipelineStage> p(new PipelineStage());
  const pipeline::PipelineShape& shape = schedule.shape;
  if (pp.size() != shape.stages || model.config().pp_size != shape.stages || model.config().pp_rank != pp.rank() ||
      model.chunks() != shape.virtual_stages) {
    return invalid_argument("pipeline: the model is stage " + std::to_string(model.config().pp_rank) + " of " +
                            std::to_string(model.config().pp_size) + " with " + std::to_string(model.chunks()) +
                            " chunks, the group's rank " + std::to_string(pp.rank()) + " of " +
                            std::to_string(pp.size()) + ", and the schedule has " + std::to_string(shape.stages) +
                            " stages of " + std::to_string(shape.virtual_stages) + " chunks");
  }
  p->stage_ = pp.rank();
  p->model_ = &model;
  p->device_ = &device;
  p->pp_ = &pp;
  p->stream_ = &stream;
  p->slots_.per_chunk = pipeline::peak_units_per_chunk(schedule, p->stage_);
  p->slots_.split_backward = pipeline::splits_backward(shape.kind);
  for (int& n : p->slots_.per_chunk) n = std::max(n, 1);
  p->schedule_ = std::move(schedule);
  STRATA_ASSIGN_OR_RETURN(p->to_next_, device.create_stream("pipeline sends to the next stage"));
  STRATA_ASSIGN_OR_RETURN(p->to_prev_, device.create_stream("pipeline sends to the previous stage"));
  STRATA_ASSIGN_OR_RETURN(p->acts_in_, device.create_stream("pipeline receives of activations"));
  STRATA_ASSIGN_OR_RETURN(p->grads_in_, device.create_stream("pipeline receives of gradients"));
  STRATA_ASSIGN_OR_RETURN(p->ready_, device.create_event());
  for (int n : p->slots_.per_chunk) {
    std::vector<SlotState> row(static_cast<std::size_t>(n));
    for (SlotState& s : row) {
      STRATA_ASSIGN_OR_RETURN(s.sent[0], device.create_event());
      STRATA_ASSIGN_OR_RETURN(s.sent[1], device.create_event());
      STRATA_ASSIGN_OR_RETURN(s.arrived[0], device.create_event());
      STRATA_ASSIGN_OR_RETURN(s.arrived[1], device.create_event());
      STRATA_ASSIGN_OR_RETURN(s.freed, device.create_event());
    }
    p->slot_state_.push_back(std::move(row));
  }
  const std::size_t m = static_cast<std::size_t>(shape.micro_batches);
  p->slot_of_unit_.assign(m * static_cast<std::size_t>(shape.virtual_stages), -1);
  p->tokens_ = static_cast<std::size_t>(micro_batch) * static_cast<std::size_t>(seq_len);
  const std::size_t bytes = m * 2 * p->tokens_ * sizeof(std::int32_t);
  auto batches = device.allocate(bytes);
  if (!batches.ok()) return batches.status().with_context("pipeline: the step's token buffers");
  p->batches_ = std::move(*batches);
  STRATA_ASSIGN_OR_RETURN(p->staging_, device.allocate_pinned(bytes));
  p->times_ = std::make_shared<std::vector<PipelineTime>>();
  return p;
}

PipelineStage::~PipelineStage() {
  for (auto* s : {&to_next_, &to_prev_, &acts_in_, &grads_in_}) {
    if (*s) (*s)->synchronize().ignore();
  }
}

Result<int> PipelineStage::slot_of(int micro, int chunk) {
  const int s = slot_of_unit_[static_cast<std::size_t>(micro * model_->chunks() + chunk)];
  if (s < 0) {
    return internal_error("pipeline stage " + std::to_string(stage_) + ": micro-batch " + std::to_string(micro) +
                          " of chunk " + std::to_string(chunk) + " holds no activation slot");
  }
  return s;
}

Status PipelineStage::acquire(int micro, int chunk) {
  const std::size_t unit = static_cast<std::size_t>(micro * model_->chunks() + chunk);
  if (slot_of_unit_[unit] >= 0) return Status::OK();
  std::vector<SlotState>& row = slot_state_[static_cast<std::size_t>(chunk)];
  for (std::size_t s = 0; s < row.size(); ++s) {
    if (row[s].unit >= 0) continue;
    row[s].unit = static_cast<int>(unit);
    slot_of_unit_[unit] = static_cast<int>(s);
    // The slot's tensors of its previous micro-batch may still be on their way to a peer.
    STRATA_RETURN_IF_ERROR(stream_->wait(*row[s].sent[0]));
    return stream_->wait(*row[s].sent[1]);
  }
  return internal_error("pipeline stage " + std::to_string(stage_) + ": chunk " + std::to_string(chunk) +
                        " has no free activation slot for micro-batch " + std::to_string(micro) + " (it has " +
                        std::to_string(row.size()) + ")");
}

Status PipelineStage::release(int micro, int chunk) {
  STRATA_ASSIGN_OR_RETURN(int s, slot_of(micro, chunk));
  SlotState& slot = state(chunk, s);
  slot.unit = -1;
  return stream_->record(*slot.freed);
}

Status PipelineStage::run(const Step& step) {
  std::fill(slot_of_unit_.begin(), slot_of_unit_.end(), -1);
  for (auto& row : slot_state_) {
    for (SlotState& s : row) s.unit = -1;
  }
  times_ = std::make_shared<std::vector<PipelineTime>>();
  for (const Instr& in : schedule_.stages[static_cast<std::size_t>(stage_)]) {
    if (in.op == Op::kStep) break;
    if (Status st = execute(in, step); !st.ok()) {
      return st.with_context("pipeline stage " + std::to_string(stage_) + ", " + pipeline::to_string(in));
    }
  }
  return Status::OK();
}

Status PipelineStage::load(int micro, const Step& step) {
  const std::size_t n = tokens_, at = static_cast<std::size_t>(micro) * 2 * n;
  std::int32_t* host = staging_.as<std::int32_t>().data() + at;
  STRATA_RETURN_IF_ERROR(step.load(micro, {host, n}, {host + n, n}));
  STRATA_ASSIGN_OR_RETURN(DeviceRange both, batches_.range(at * 4, 2 * n * 4));
  return device_->copy_to_device(both, {reinterpret_cast<const std::byte*>(host), 2 * n * 4}, *stream_);
}

Status PipelineStage::send(const Instr& in, DeviceView what, Stream& on) {
  STRATA_RETURN_IF_ERROR(stream_->record(*ready_));
  STRATA_RETURN_IF_ERROR(on.wait(*ready_));
  STRATA_RETURN_IF_ERROR(pp_->send(CommBuffer::of(what), in.peer, in.tag, on));
  STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, in.chunk));
  return on.record(*state(in.chunk, s).sent[in.op == Op::kSendGrad ? 1 : 0]);
}

Status PipelineStage::receive(const Instr& in, DeviceView into, Stream& on) {
  STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, in.chunk));
  SlotState& slot = state(in.chunk, s);
  // The slot's previous micro-batch is done with the buffer, here and on its way out.
  STRATA_RETURN_IF_ERROR(on.wait(*slot.freed));
  STRATA_RETURN_IF_ERROR(on.wait(*slot.sent[0]));
  STRATA_RETURN_IF_ERROR(on.wait(*slot.sent[1]));
  STRATA_RETURN_IF_ERROR(pp_->recv(CommBuffer::of(into), in.peer, in.tag, on));
  Event& arrived = *slot.arrived[in.op == Op::kRecvGrad ? 1 : 0];
  STRATA_RETURN_IF_ERROR(on.record(arrived));
  return stream_->wait(arrived);
}

Status PipelineStage::timed(const Instr& in, const std::function<Status()>& work) {
  if (!timestamps_) return work();
  const std::size_t i = times_->size();
  const char op = in.op == Op::kForward ? 'F' : in.op == Op::kBackwardWeight ? 'W' : 'B';
  times_->push_back(PipelineTime{op, in.micro, in.chunk, 0, 0});
  auto now = [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  STRATA_RETURN_IF_ERROR(stream_->launch_host_func([times = times_, i, now] { (*times)[i].start = now(); }));
  STRATA_RETURN_IF_ERROR(work());
  return stream_->launch_host_func([times = times_, i, now] { (*times)[i].end = now(); });
}

Status PipelineStage::execute(const Instr& in, const Step& step) {
  const int c = in.chunk;
  switch (in.op) {
    case Op::kLoad: {
      STRATA_RETURN_IF_ERROR(acquire(in.micro, c));
      STRATA_RETURN_IF_ERROR(load(in.micro, step));
      STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, c));
      const std::size_t at = static_cast<std::size_t>(in.micro) * 2 * tokens_ * 4;
      STRATA_ASSIGN_OR_RETURN(DeviceRange tok, batches_.range(at, tokens_ * 4));
      STRATA_ASSIGN_OR_RETURN(DeviceRange tgt, batches_.range(at + tokens_ * 4, tokens_ * 4));
      return model_->set_batch(c, s, tok, tgt);
    }
    case Op::kRecvAct: {
      STRATA_RETURN_IF_ERROR(acquire(in.micro, c));
      STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, c));
      return receive(in, model_->part_input(c, s), *acts_in_);
    }
    case Op::kForward: {
      STRATA_RETURN_IF_ERROR(acquire(in.micro, c));
      STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, c));
      return timed(in, [&] { return model_->forward_part(c, s, step.loss_sum, step.loss_weight, *stream_); });
    }
    case Op::kSendAct: {
      STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, c));
      return send(in, model_->part_output(c, s), *to_next_);
    }
    case Op::kRecvGrad: {
      STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, c));
      return receive(in, model_->part_grad(c, s), *grads_in_);
    }
    case Op::kBackward:
    case Op::kBackwardInput: {
      STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, c));
      const bool split = in.op == Op::kBackwardInput;
      STRATA_RETURN_IF_ERROR(timed(in, [&] { return model_->backward_part(c, s, step.dloss, split, *stream_); }));
      return split ? Status::OK() : release(in.micro, c);
    }
    case Op::kBackwardWeight: {
      STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, c));
      STRATA_RETURN_IF_ERROR(timed(in, [&] { return model_->weight_part(c, s, *stream_); }));
      return release(in.micro, c);
    }
    case Op::kSendGrad: {
      STRATA_ASSIGN_OR_RETURN(int s, slot_of(in.micro, c));
      return send(in, model_->part_grad(c, s), *to_prev_);
    }
    case Op::kReduceTied: return step.reduce_tied();
    case Op::kReduceGrads: return step.reduce_grads();
    case Op::kStep: return Status::OK();
  }
  return internal_error("pipeline: unknown instruction");
}


}  // namespace strata::engine
