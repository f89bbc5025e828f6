// Aggregates a flex sequence's SelectionTrace (model/engine.h: a 9x9 block mask per step and FA
// layer) into what the final message carries (proto SelectionSummary): per FA layer, in how many
// steps each block was selected, and the tokens it attended to. Its size is FA layers x 81 counts
// whatever the answer's length. Pure functions; any thread.
#pragma once

#include <cstdint>
#include <vector>

#include "model/engine.h"

namespace flexvqa {

struct SelectionSummary {
  int grid = 0;     // Blocks per side.
  int hr_side = 0;  // High-resolution tokens per side.
  int first_fa_layer = 0;
  int num_fa_layers = 0;
  int num_steps = 0;  // 0: nothing was selected from (not flex, no image): the summary is absent.
  int region_x = 0, region_y = 0, region_side = 0;  // As SelectionTrace's.
  std::vector<uint32_t> block_steps;                // [num_fa_layers][grid * grid].
  std::vector<int64_t> selected_tokens;             // [num_fa_layers], summed over steps.
  bool empty() const { return num_steps == 0; }
};

// An empty summary when the trace is empty or its arrays do not have the shapes it states.
SelectionSummary SummarizeSelections(const SelectionTrace& trace);

}  // namespace flexvqa
