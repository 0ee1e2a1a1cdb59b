import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full", app_title="geosdm map explorer")


@app.cell
def _():

    import altair as alt
    import marimo as mo
    import numpy as np
    import polars as pl

    from geosdm import demo, zoom, zoommap
    from geosdm.core import N_WEEKS, week_label
    from geosdm.predict import Predictor, parse_location

    return N_WEEKS, Predictor, alt, demo, mo, np, parse_location, pl, week_label, zoom, zoommap


@app.cell
def _(demo, mo):
    # checkpoint: `marimo run explorer.py -- --checkpoint PATH`, else $GEOSDM_CHECKPOINT, else the demo model
    checkpoint_input = demo.checkpoint_picker(mo)
    return (checkpoint_input,)


@app.cell
def _(Predictor, checkpoint_input, demo, mo, np, zoom):
    with mo.status.spinner(title="Loading the model (the demo model is trained on first use, about a minute)…"):
        try:
            checkpoint_path = demo.resolve_checkpoint(checkpoint_input.value.strip() or None)
            pred = Predictor(checkpoint_path, device=str(mo.cli_args().get("device") or "auto"))  # GPU if any
            grid = zoom.model_grid(pred)  # the model's own H3 cells
        except (FileNotFoundError, ValueError) as e:
            mo.stop(True, mo.callout(mo.md(f"**Cannot load the checkpoint:** {e}"), kind="danger"))
        yearly = zoom.yearly_rule(pred)  # what week 0 (the whole year) means on the map
        # a first look at every species, for the defaults: the year at the centres of at most 200 of the model's
        # cells or their parents (the 122 cells of resolution 0 for a global model)
        overview_ids = zoom.view_cells(grid, zoom.WORLD, 200).ids
        _lat, _lon = zoom.id_centres(overview_ids)
        overview = pred.predict(_lat, _lon, np.zeros(len(_lat)), yearly=yearly)
        overview_latlng = np.c_[_lat, _lon]
        value_cache = zoom.ValueCache()  # per-cell probabilities already computed (species, week)
    is_demo = not checkpoint_input.value.strip()
    model_note = mo.md(
        f"**Model** `{checkpoint_path}` ({'demo model, trained on first use; ' if is_demo else ''}"
        f"epoch {pred.epoch}, {pred.n_species:,} species, {len(grid):,} cells of H3 resolution {grid.res})"
    )
    return grid, model_note, overview, overview_latlng, pred, value_cache, yearly


@app.cell
def _(N_WEEKS, demo, mo, np, overview, overview_latlng, pred, yearly):
    # species: searchable by common name, scientific name or code; default = the most widespread species
    species_dropdown = demo.species_picker(mo, pred, pred.vocab[int(np.argmax(overview.mean(0)))])
    _year = "the model's yearly output" if yearly == "model" else "the highest week"
    week_slider = mo.ui.slider(
        0, N_WEEKS, value=0, label=f"Week (0 = the whole year: {_year})", show_value=True, full_width=True
    )
    _best = int(np.argmax((overview > 0.1).sum(1)))  # default location: the richest place
    location_input = mo.ui.text(
        value=f"{overview_latlng[_best, 0]:.3f}, {overview_latlng[_best, 1]:.3f}",
        label='Location: H3 cell id or "lat, lon" (hover a map cell to see its id)',
        full_width=True,
    )
    list_threshold = mo.ui.slider(0.0, 0.9, step=0.01, value=0.1, label="List threshold", show_value=True)
    _modes = {"calibrated per species": "species", "one threshold (slider)": "global"}
    list_mode = mo.ui.dropdown(  # a model trained by geosdm carries thresholds learned on its validation cells
        options=_modes if pred.calibration is not None else {"one threshold (slider)": "global"},
        value="calibrated per species" if pred.calibration is not None else "one threshold (slider)",
        label="Lists",
    )
    return list_mode, list_threshold, location_input, species_dropdown, week_slider


@app.cell
def _(checkpoint_input, list_mode, list_threshold, location_input, mo, model_note, species_dropdown, week_slider):
    mo.vstack(
        [
            mo.md("# geosdm map explorer"),
            checkpoint_input,
            model_note,
            mo.hstack([species_dropdown, week_slider], widths=[2, 1]),
            mo.hstack([location_input, list_mode, list_threshold], widths=[2, 1, 1]),
        ]
    )
    return


@app.cell
def _(pred, species_dropdown, week_slider):
    species = species_dropdown.value
    species_index = pred.index(species)
    week = int(week_slider.value)
    return species, species_index, week


@app.cell
def _(grid, mo, zoommap):
    # the map: zoom and pan; the model's own cells appear where they fit in the view (built once per model)
    species_map = zoommap.DeckMap(bounds=list(grid.bounds()), overlays=[zoommap.coast_layer()], height=500)
    map_view = mo.ui.anywidget(species_map)
    map_view  # noqa: B018  (shown here, once: the map keeps its view while it is redrawn)
    return map_view, species_map


@app.cell
def _(grid, map_view, pred, species_index, species_map, value_cache, week, yearly, zoom, zoommap):
    # redrawn when the species, the week or the map's view changes: only the cells in view, one species, one week
    map_view  # noqa: B018  (the view the browser reports)
    drawn = zoommap.draw(
        species_map,
        zoom.ModelValues(pred, grid, species_index, week, yearly, value_cache),
        title=zoom.map_title(pred, species_index, week),
    )
    return (drawn,)


@app.cell
def _(list_mode, list_threshold, location_input, mo, np, parse_location, pl, pred, week, week_label, yearly):
    try:
        location = parse_location(location_input.value)
        location_error = None
    except ValueError as e:
        location, location_error = None, str(e)
    if location is None:
        species_table = pl.DataFrame()
    else:
        _p = pred.predict([location[0]], [location[1]], [week], yearly=yearly)[0]  # the year as on the map
        _order = np.argsort(-_p, kind="stable")
        _global = list_mode.value == "global"
        _t = pred.thresholds(
            [location[0]], [location[1]], list_mode.value, float(list_threshold.value) if _global else None
        )
        _order = _order[_p[_order] >= _t[0][_order]][:50]
        species_table = pl.DataFrame(
            {
                "rank": list(range(1, len(_order) + 1)),
                "common name": [pred.common_names[i] for i in _order],
                "scientific name": [pred.sci_names[i] for i in _order],
                "code": [pred.vocab[i] for i in _order],
                "probability": [round(float(_p[i]), 3) for i in _order],
            },
            schema_overrides={"rank": pl.Int64},
        )
    list_view = (
        mo.callout(mo.md(location_error), kind="warn")
        if location_error
        else mo.vstack(
            [
                mo.md(
                    f"**{len(species_table)} species** with p ≥ "
                    f"{f'{list_threshold.value:.2f}' if list_mode.value == 'global' else 'their calibrated thresholds'} at "
                    f"({location[0]:.3f}, {location[1]:.3f}), {week_label(week)}"
                ),
                mo.ui.table(
                    species_table.select("rank", "probability", "common name", "scientific name"),
                    selection=None,
                    page_size=15,
                    show_column_summaries=False,
                ),
            ]
        )
    )
    return location, list_view, species_table


@app.cell
def _(N_WEEKS, alt, location, np, pl, pred, species_index, species_table):
    # phenology at the location: the chosen species and the top of the list
    if location is None:
        phenology_chart = alt.Chart(pl.DataFrame({"week": [], "probability": []})).mark_line()
    else:
        _ph = pred.phenology(location[0], location[1])
        _idx = [species_index] + [
            pred.index(c) for c in species_table["code"].to_list()[:5] if pred.index(c) != species_index
        ]
        _df = pl.DataFrame(
            {
                "week": np.tile(np.arange(1, N_WEEKS + 1), len(_idx)),
                "probability": _ph[:, _idx].T.ravel(),
                "species": np.repeat([pred.common_names[i] for i in _idx], N_WEEKS),
            }
        )
        phenology_chart = (
            alt.Chart(_df)
            .mark_line(point=alt.OverlayMarkDef(size=12))
            .encode(
                x=alt.X("week:Q", scale=alt.Scale(domain=[1, N_WEEKS])),
                y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("species:N", sort=[pred.common_names[i] for i in _idx]),
                tooltip=["species", "week", alt.Tooltip("probability:Q", format=".3f")],
            )
            .properties(title=f"Phenology at the location ({N_WEEKS} weeks)", width=520, height=240)
            .configure_legend(orient="bottom", columns=2, title=None)
        )
    return (phenology_chart,)


@app.cell
def _(list_view, mo, phenology_chart):
    mo.hstack([phenology_chart, list_view], widths=[3, 2], align="start")
    return


if __name__ == "__main__":
    app.run()
