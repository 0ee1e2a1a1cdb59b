import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full", app_title="geosdm list calibration")


@app.cell
def _():

    import marimo as mo
    import numpy as np
    import polars as pl

    from geosdm import demo, evaluate, maps, zoom, zoommap
    from geosdm.predict import Predictor
    return Predictor, demo, evaluate, maps, mo, np, pl, zoom, zoommap


@app.cell
def _(demo, mo):
    # checkpoint: `marimo run calibration.py -- --checkpoint PATH`, else $GEOSDM_CHECKPOINT, else the demo model
    checkpoint_input = demo.checkpoint_picker(mo)
    return (checkpoint_input,)


@app.cell
def _():
    FIXED = (0.05, 0.10, 0.25)  # the trainer's list-length thresholds
    SLIDER = tuple(round(0.01 * i, 2) for i in range(1, 51))  # the threshold slider's values
    SCORED = FIXED + tuple(t for t in SLIDER if t not in FIXED)
    return FIXED, SCORED


@app.cell
def _(Predictor, SCORED, checkpoint_input, demo, evaluate, mo):
    with mo.status.spinner(title="Loading the model and its validation / hold-out data…"):
        try:
            checkpoint_path = demo.resolve_checkpoint(checkpoint_input.value.strip() or None)
            pred = Predictor(checkpoint_path, device=str(mo.cli_args().get("device") or "auto"))  # GPU if any
            prep = demo.checkpoint_data(pred)
        except (FileNotFoundError, ValueError) as e:
            mo.stop(True, mo.callout(mo.md(f"**Cannot load the checkpoint or its data:** {e}"), kind="danger"))
        # per-sample scores at the 5 / 10 / 25 % thresholds and at every threshold of the slider, computed once (in
        # blocks: a split of the real size does not fit in memory as probabilities)
        evaluations = {k: evaluate.evaluate_split(pred, prep, k, thresholds=SCORED) for k in ("val", "holdout")}
        evaluations = {k: v for k, v in evaluations.items() if v is not None}
    mo.stop(not evaluations, mo.callout(mo.md("The checkpoint's data have no validation or hold-out samples."), kind="warn"))
    is_demo = not checkpoint_input.value.strip()
    _sizes = ", ".join(f"{k}: {len(v['samples']):,} samples" for k, v in evaluations.items())
    model_note = mo.md(
        f"**Model** `{checkpoint_path}` ({'demo model, trained on first use; ' if is_demo else ''}"
        f"epoch {pred.epoch}, {pred.n_species} species) — {_sizes}"
    )
    return evaluations, model_note, pred, prep


@app.cell
def _(evaluations, mo):
    split_dropdown = mo.ui.dropdown(
        options={"validation": "val", "hold-out": "holdout"} if "holdout" in evaluations else {"validation": "val"},
        value="validation",
        label="Set",
    )
    threshold_slider = mo.ui.slider(0.01, 0.5, step=0.01, value=0.10, label="Threshold", show_value=True, full_width=True)
    return split_dropdown, threshold_slider


@app.cell
def _(checkpoint_input, mo, model_note, split_dropdown, threshold_slider):
    mo.vstack(
        [
            mo.md("# geosdm per-region list calibration"),
            checkpoint_input,
            model_note,
            mo.md(
                "Regions are the five hold-out regions and, elsewhere, the 30° × 60° bins the trainer weights species by. "
                "List ratio = Σ predicted / Σ observed list length over samples with an observed species "
                "(1 = calibrated, > 1 = lists too long)."
            ),
            mo.hstack([split_dropdown, threshold_slider], widths=[1, 3]),
        ]
    )
    return


@app.cell
def _(FIXED, evaluate, evaluations, split_dropdown, threshold_slider):
    threshold = round(float(threshold_slider.value), 4)
    evaluation = evaluations[split_dropdown.value]
    # the scores at the slider's threshold (scored once with the others)
    evaluation_t = evaluate.at_thresholds(evaluation, (threshold,))
    region_fixed = evaluate.region_table(evaluate.at_thresholds(evaluation, FIXED))  # at 5 / 10 / 25 %
    region_t = evaluate.region_table(evaluation_t)  # at the slider's threshold
    return evaluation_t, region_fixed, region_t, threshold


@app.cell
def _(mo, pl, region_fixed, region_t, threshold):
    _f = lambda df: df.with_columns(pl.col(pl.Float64).round(3))
    _tag = f"{round(threshold * 100):d}"
    tables = mo.vstack(
        [
            mo.md(f"### Per region at the threshold {threshold:.2f}"),
            mo.ui.table(
                _f(region_t.rename({f"mean_pred_{_tag}": "mean_pred", f"list_ratio_{_tag}": "list_ratio",
                                    f"precision_{_tag}": "precision", f"recall_{_tag}": "recall"})),
                selection=None,
                show_column_summaries=False,
                page_size=12,
            ),
            mo.md("### Per region at 5 / 10 / 25 %: predicted vs. observed list length"),
            mo.ui.table(_f(region_fixed), selection=None, show_column_summaries=False, page_size=12),
        ]
    )
    return (tables,)


@app.cell
def _(evaluations, mo, np, split_dropdown, zoom, zoommap):
    # the map of the chosen set: its own cells where they fit in the view, their parents further out
    _ev = evaluations[split_dropdown.value]
    split_grid = zoom.CellGrid.from_cells(_ev["cells"][np.unique(_ev["samples"].cell)])
    ratio_map = zoommap.DeckMap(
        bounds=list(split_grid.bounds()), overlays=[zoommap.coast_layer(), zoommap.boxes_layer()], height=460
    )
    ratio_view = mo.ui.anywidget(ratio_map)
    ratio_view  # noqa: B018  (shown here, once: the map keeps its view while it is redrawn)
    return ratio_map, ratio_view, split_grid


@app.cell
def _(evaluate, evaluation_t, np, ratio_map, ratio_view, split_grid, threshold, zoom, zoommap):
    ratio_view  # noqa: B018  (redrawn when the map moves)
    _t = evaluate.cell_table(evaluation_t, threshold)
    _lr = np.full(len(split_grid), np.nan)  # log2 list ratio per cell: 0 = calibrated
    _lr[split_grid.index(_t["h3_index"])] = np.log2(
        _t["list_ratio"].fill_nan(None).fill_null(np.nan).to_numpy().clip(1 / 16, 16)
    )
    ratio_drawn = zoommap.draw(
        ratio_map,
        zoom.CellValues(split_grid, _lr),
        title=f"{'validation' if evaluation_t['split'] == 'val' else 'hold-out'}: list ratio at {threshold:.0%}",
        label="log2 list ratio (0 = calibrated)",
        vmin=-3,
        vmax=3,
        palette="redblue",
        fmt=".2f",
        agg="mean",
    )
    return (ratio_drawn,)


@app.cell
def _(evaluate, evaluation_t, evaluations, maps, np, region_t, threshold):
    _keys = evaluate.region_labels(evaluation_t["samples"].lat, evaluation_t["samples"].lon)
    # reliability: every set, plus the three largest regions of the chosen set
    _rel = {("validation" if k == "val" else "hold-out"): evaluate.reliability(v) for k, v in evaluations.items()}
    for _r in region_t["region"].to_list()[:3]:
        _rel[f"{evaluation_t['split']}: {_r}"] = evaluate.reliability(evaluation_t, mask=_keys == _r)
    reliability_chart = maps.reliability_chart(_rel, width=320, height=280).configure_legend(orient="bottom", columns=2)
    _lr = region_t[f"list_ratio_{round(threshold * 100):d}"].to_numpy()
    summary = {
        "regions": len(region_t),
        "median_list_ratio": float(np.nanmedian(_lr)) if np.isfinite(_lr).any() else float("nan"),
    }
    return reliability_chart, summary


@app.cell
def _(mo, reliability_chart, tables):
    mo.vstack([reliability_chart, tables])
    return


if __name__ == "__main__":
    app.run()
