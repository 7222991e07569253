# KLayout batch-mode reader check for DKO GDSII files (run by tests/optics/test_gds_klayout.py):
#   klayout -b -r scripts/klayout-check.py -rd gds=<file> -rd out=<json>
# Reads the file with KLayout's own GDSII reader and writes what it sees: top cells, the number of
# pillar polygons (layer 1) in the flattened top cell, and each element instance's name and origin.
import json

import pya  # noqa: F401  (provided by KLayout)

layout = pya.Layout()
layout.read(gds)  # noqa: F821 (set by -rd)
top = layout.top_cells()
summary = {"dbu_um": layout.dbu, "top_cells": [c.name for c in top], "pillars": 0, "elements": {}}
pillar_layer = layout.find_layer(1, 0)
for cell in top:
    if pillar_layer is not None:
        shapes = cell.begin_shapes_rec(pillar_layer)
        while not shapes.at_end():
            summary["pillars"] += 1
            shapes.next()
    for inst in cell.each_inst():
        name = inst.cell.name
        summary["elements"][name] = [inst.trans.disp.x * layout.dbu, inst.trans.disp.y * layout.dbu]
with open(out, "w") as handle:  # noqa: F821 (set by -rd)
    json.dump(summary, handle)
