#include "server/selection_summary.h"

namespace flexvqa {

SelectionSummary SummarizeSelections(const SelectionTrace& trace) {
  const size_t blocks = static_cast<size_t>(trace.grid) * trace.grid;
  const size_t layer_steps = static_cast<size_t>(trace.num_steps) * trace.num_fa_layers;
  if (trace.num_steps <= 0 || trace.num_fa_layers <= 0 || trace.grid <= 0 ||
      trace.masks.size() != layer_steps * blocks || trace.selected_tokens.size() != layer_steps) {
    return {};
  }
  SelectionSummary out;
  out.grid = trace.grid;
  out.hr_side = trace.hr_side;
  out.first_fa_layer = trace.first_fa_layer;
  out.num_fa_layers = trace.num_fa_layers;
  out.num_steps = trace.num_steps;
  out.region_x = trace.region_x;
  out.region_y = trace.region_y;
  out.region_side = trace.region_side;
  out.block_steps.assign(static_cast<size_t>(trace.num_fa_layers) * blocks, 0);
  out.selected_tokens.assign(trace.num_fa_layers, 0);
  for (int step = 0; step < trace.num_steps; ++step) {
    for (int layer = 0; layer < trace.num_fa_layers; ++layer) {
      const size_t at = static_cast<size_t>(step) * trace.num_fa_layers + layer;
      out.selected_tokens[layer] += trace.selected_tokens[at];
      const uint8_t* mask = trace.masks.data() + at * blocks;
      uint32_t* counts = out.block_steps.data() + static_cast<size_t>(layer) * blocks;
      for (size_t b = 0; b < blocks; ++b) counts[b] += mask[b] != 0;
    }
  }
  return out;
}

}  // namespace flexvqa
