import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full", app_title="geosdm map explorer")


@app.cell
def _():

    import altair as alt
    import h3
    import marimo as mo
    import numpy as np
    import polars as pl

    from geosdm import demo, maps
    from geosdm.core import N_WEEKS, week_label
    from geosdm.predict import Predictor, parse_location

    return N_WEEKS, Predictor, alt, demo, h3, maps, mo, np, parse_location, pl, week_label


@app.cell
def _(demo, mo):
    # checkpoint: `marimo run explorer.py -- --checkpoint PATH`, else $GEOSDM_CHECKPOINT, else the demo model
    checkpoint_input = demo.checkpoint_picker(mo)
    return (checkpoint_input,)


@app.cell
def _(Predictor, checkpoint_input, demo, h3, maps, mo, np):
    with mo.status.spinner(title="Loading the model (the demo model is trained on first use, about a minute)…"):
        try:
            checkpoint_path = demo.resolve_checkpoint(checkpoint_input.value.strip() or None)
            pred = Predictor(checkpoint_path, device=str(mo.cli_args().get("device") or "auto"))  # GPU if any
        except (FileNotFoundError, ValueError) as e:
            mo.stop(True, mo.callout(mo.md(f"**Cannot load the checkpoint:** {e}"), kind="danger"))
        cells = maps.model_cells(pred)
        cell_latlng = np.array([h3.cell_to_latlng(c) for c in cells])
        yearly = pred.predict_cells(cells, 0)
    is_demo = not checkpoint_input.value.strip()
    model_note = mo.md(
        f"**Model** `{checkpoint_path}` ({'demo model, trained on first use; ' if is_demo else ''}"
        f"epoch {pred.epoch}, {pred.n_species} species, {len(cells):,} cells)"
    )
    return cell_latlng, cells, model_note, pred, yearly


@app.cell
def _(N_WEEKS, cell_latlng, demo, mo, np, pred, yearly):
    # species: searchable by common name, scientific name or code; default = the most widespread species
    species_dropdown = demo.species_picker(mo, pred, pred.vocab[int(np.argmax(yearly.mean(0)))])
    week_slider = mo.ui.slider(0, N_WEEKS, value=0, label="Week (0 = whole year)", show_value=True, full_width=True)
    _best = int(np.argmax((yearly > 0.1).sum(1)))  # default location: the richest cell
    location_input = mo.ui.text(
        value=f"{cell_latlng[_best, 0]:.3f}, {cell_latlng[_best, 1]:.3f}",
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
def _(cells, pred, week, yearly):
    # predictions of every species at every cell in the chosen week: species changes reuse them
    week_probs = yearly if week == 0 else pred.predict_cells(cells, week)
    return (week_probs,)


@app.cell
def _(cells, maps, pred, species, week, week_probs):
    distribution_chart = maps.probability_map(pred, species, week, cells, probs=week_probs, width=520, height=360)
    return (distribution_chart,)


@app.cell
def _(list_mode, list_threshold, location_input, mo, parse_location, pl, pred, week, week_label):
    try:
        location = parse_location(location_input.value)
        location_error = None
    except ValueError as e:
        location, location_error = None, str(e)
    if location is None:
        species_table = pl.DataFrame()
    else:
        _global = list_mode.value == "global"
        _rows = pred.species_list(
            location[0], location[1], week, top_k=50, mode=list_mode.value,
            threshold=float(list_threshold.value) if _global else None,
        )  # fmt: skip
        species_table = pl.DataFrame(
            {
                "rank": list(range(1, len(_rows) + 1)),
                "common name": [r[2] for r in _rows],
                "scientific name": [r[1] for r in _rows],
                "code": [r[0] for r in _rows],
                "probability": [round(r[3], 3) for r in _rows],
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
def _(distribution_chart, list_view, mo, phenology_chart):
    mo.hstack([mo.vstack([distribution_chart, phenology_chart]), list_view], widths=[3, 2], align="start")
    return


if __name__ == "__main__":
    app.run()
