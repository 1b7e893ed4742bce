// strata/data.h — token data for training: byte-level tokens from any file, or uint16 token
// files, and the deterministic batch sampling every strata run uses.
//
// Formats (chosen by TokenDataset::open from the file name, or given explicitly):
//   bytes  every byte of the file is one token (vocabulary 256) — any text works as is;
//   u16    a file named *.u16: little-endian uint16 token ids, two bytes per token, for data
//          tokenised elsewhere (e.g. with the GPT-2 BPE, vocabulary 50257).
// Files are memory-mapped read-only, so a large token file costs no RAM up front.
//
// Sampling (documented so that another tool can reproduce a run's batches exactly). With N the
// number of tokens, T the sequence length, B the micro-batch, A the gradient-accumulation
// steps: at step s (0-based: the first optimizer step is s = 0), accumulation micro-step a
// (0 <= a < A), row r (0 <= r < B), the row reads T + 1 consecutive tokens starting at
//     offset = (((s * A + a) * B + r) * T) mod (N - T - 1)
// (computed in exact integer arithmetic); its inputs are tokens [offset, offset + T) and its
// targets tokens [offset + 1, offset + T + 1). Consecutive rows therefore walk the data in
// order, one sequence length apart, and wrap around. N must be at least T + 2.
//
// Data parallelism. With D data-parallel ranks each reading B rows (B = train.micro_batch per
// rank), a micro-step's global micro-batch has D * B rows and rank d reads its rows
// [d * B, (d + 1) * B): row r of rank d is row d * B + r of the formula above with B replaced
// by D * B. A run on D ranks therefore sees exactly the batches of a one-rank run with
// micro_batch = D * B, and the mean of the ranks' losses is that run's loss.
//
// Thread-safety: a TokenDataset is immutable after creation; copies share the mapping and may
// be used from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "strata/status.h"

namespace strata {

enum class TokenFormat : std::uint8_t { kBytes = 0, kU16 };

// The shape of a step's batches.
struct BatchShape {
  int micro_batch = 1;  // B: rows per micro-batch (per data-parallel rank)
  int grad_accum = 1;   // A: micro-batches per step
  int seq_len = 1;      // T
  int dp_ranks = 1;     // D: data-parallel ranks reading one global micro-batch of D * B rows
  int dp_rank = 0;      // d: this rank's place among them, 0 <= d < D
};

class TokenDataset {
 public:
  // u16 for a path ending in ".u16", bytes otherwise.
  static Result<TokenDataset> open(const std::string& path);
  static Result<TokenDataset> open(const std::string& path, TokenFormat format);
  // The built-in text: the regular files (not the symbolic links) of /usr/share/common-licenses
  // concatenated in name order, as bytes — present on every Debian machine.
  static Result<TokenDataset> default_text();
  static constexpr const char* kDefaultTextDir = "/usr/share/common-licenses";
  // Tokens already in memory (tests, programs that tokenise themselves).
  static TokenDataset from_tokens(std::vector<std::uint16_t> tokens, std::string name);

  // Where the tokens came from (a path, or a description).
  const std::string& name() const;
  TokenFormat format() const;
  std::uint64_t size() const;
  std::uint32_t token(std::uint64_t i) const;
  // 1 + the largest token id (256 for bytes; scanned once at open for u16 files).
  std::uint32_t vocab_needed() const;

  // OK when every token is < vocab and the data has at least seq_len + 2 tokens; otherwise an
  // invalid-argument Status naming the data and what to change.
  Status check(int vocab, int seq_len) const;

  // The sampling rule above. REQUIRES: check() passed for shape.seq_len.
  std::uint64_t offset(std::int64_t step, int micro, int row, const BatchShape& shape) const;

  // Fills inputs and targets, each (B, T) row-major, for (step, micro-step).
  // Fails when the spans are not B * T long or check() would fail.
  Status batch(std::int64_t step, int micro, const BatchShape& shape, std::span<std::int32_t> inputs,
               std::span<std::int32_t> targets) const;

 private:
  struct Impl;
  explicit TokenDataset(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace strata
