// Validation of the step's BatchDesc, shared by the ops that read it (attention, kv_append). The
// engine builds these arrays itself, but a wrong one would make the kernels read or write outside
// the KV cache, so the O(T + S log S) check is worth its cost.
#include <algorithm>
#include <vector>

#include "cpu/cpu_ops.h"

namespace gptoss {

Status check_batch(const BatchDesc& b, int slots, const char* op) {
  const std::string where = std::string(op) + ": batch ";
  if (b.T < 1 || b.S < 1 || b.S > b.T)
    return invalid(where + "needs 1 <= S <= T, got T=" + std::to_string(b.T) + " S=" + std::to_string(b.S));
  if (!b.tok_pos || !b.tok_seq || !b.seq_slot || !b.seq_start || !b.seq_tok0)
    return invalid(where + "arrays must all be set");
  if (b.seq_tok0[0] != 0 || b.seq_tok0[b.S] != b.T)
    return invalid(where + "seq_tok0 must start at 0 and end at T=" + std::to_string(b.T));
  std::vector<int32_t> used(b.seq_slot, b.seq_slot + b.S);
  for (int s = 0; s < b.S; ++s) {
    const std::string seq = where + "sequence " + std::to_string(s) + ": ";
    if (b.seq_tok0[s + 1] <= b.seq_tok0[s]) return invalid(seq + "has no tokens (seq_tok0 not increasing)");
    if (b.seq_slot[s] < 0 || b.seq_slot[s] >= slots)
      return invalid(seq + "slot " + std::to_string(b.seq_slot[s]) + " is outside [0, " +
                     std::to_string(slots) + ")");
    if (b.seq_start[s] < 0) return invalid(seq + "negative start position");
    for (int t = b.seq_tok0[s]; t < b.seq_tok0[s + 1]; ++t) {
      if (b.tok_seq[t] != s) return invalid(seq + "token " + std::to_string(t) + " has tok_seq " + std::to_string(b.tok_seq[t]));
      if (b.tok_pos[t] != b.seq_start[s] + (t - b.seq_tok0[s]))
        return invalid(seq + "token " + std::to_string(t) + " has position " + std::to_string(b.tok_pos[t]) +
                       ", expected seq_start + offset = " + std::to_string(b.seq_start[s] + (t - b.seq_tok0[s])));
    }
  }
  std::sort(used.begin(), used.end());
  if (std::adjacent_find(used.begin(), used.end()) != used.end())
    return invalid(where + "two sequences share one KV-cache slot");
  return Status::Ok();
}

}  // namespace gptoss
