"Tests of geosdm.geo that need more than the notebook's examples."

import h3
import numpy as np
import pytest

from geosdm.geo import cell_centres, cells_geojson, in_boxes


def test_cells_geojson_closed_rings():
    "Moved from test_simulate (it tested simulate.cells_to_geojson, now geo.cells_geojson)."
    cells = np.array(sorted(c for r in h3.get_res0_cells() for c in h3.cell_to_children(r, 1)))
    cells = cells[in_boxes(*cell_centres(cells), [(-30, -40, 60, 60)])]
    gj = cells_geojson(cells, {'a': np.arange(len(cells), dtype=float), 'b': [None] * len(cells)})
    assert gj['type'] == 'FeatureCollection' and len(gj['features']) == len(cells)
    for f in gj['features']:
        ring = f['geometry']['coordinates'][0]
        assert ring[0] == ring[-1] and len(ring) >= 6
        area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]))
        assert area2 < 0  # clockwise: d3/vega draws the hexagon, not its complement
        assert all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in ring)
    with pytest.raises(ValueError, match='values'):
        cells_geojson(cells, {'a': [1.0]})
