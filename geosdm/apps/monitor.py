import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full", app_title="geosdm training monitor")


@app.cell
def _():
    import functools
    import os
    from pathlib import Path

    import marimo as mo
    import numpy as np

    from geosdm import demo, maps, plots, runlog
    from geosdm.core import N_WEEKS, GeoSDMError
    from geosdm.predict import Predictor
    return GeoSDMError, N_WEEKS, Path, Predictor, demo, functools, maps, mo, np, os, plots, runlog


@app.cell
def _(Predictor, functools, maps):
    # the best checkpoint is loaded again only when the file changes (its mtime is part of the key)
    @functools.lru_cache(maxsize=2)
    def load_model(path, stamp, device):
        pred = Predictor(path, device=device)
        cells = maps.model_cells(pred)
        return pred, cells, pred.predict_cells(cells, 0)

    @functools.lru_cache(maxsize=8)
    def week_probs(path, stamp, device, week):
        pred, cells, yearly = load_model(path, stamp, device)
        return yearly if week == 0 else pred.predict_cells(cells, week)
    return load_model, week_probs


@app.cell
def _(N_WEEKS, mo, os):
    # run folder: `marimo run monitor.py -- --run_dir PATH [--device cuda]`, else $GEOSDM_RUN_DIR
    _args = mo.cli_args()
    run_dir_input = mo.ui.text(
        value=str(_args.get("run_dir") or os.environ.get("GEOSDM_RUN_DIR") or ""),
        placeholder="the --checkpoint_dir of a training run",
        label="Run folder",
        full_width=True,
    )
    device = str(_args.get("device") or os.environ.get("GEOSDM_DEVICE") or "auto")
    refresh = mo.ui.refresh(options=["2s", "5s", "10s", "30s", "1m"], default_interval="5s", label="Refresh every")
    week_slider = mo.ui.slider(0, N_WEEKS, value=0, label="Week (0 = whole year)", show_value=True, full_width=True)
    get_species, set_species = mo.state(None)
    return device, get_species, refresh, run_dir_input, set_species, week_slider


@app.cell
def _(mo, refresh, run_dir_input):
    mo.vstack(
        [
            mo.md("# geosdm training monitor"),
            mo.md(
                "Follows a training run, finished or in progress (the trainer may run on a GPU in another process): "
                "the curves are read again from `training_history.json` at every refresh, and the map shows the "
                "run's current best checkpoint."
            ),
            mo.hstack([run_dir_input, refresh], widths=[4, 1], align="end"),
        ]
    )
    return


@app.cell
def _(GeoSDMError, Path, mo, plots, refresh, run_dir_input):
    _ = refresh.value  # read again at every refresh
    _text = run_dir_input.value.strip()
    mo.stop(not _text, mo.callout(mo.md("Give the checkpoint folder of a training run."), kind="info"))
    run_dir = Path(_text).expanduser()
    mo.stop(not run_dir.is_dir(), mo.callout(mo.md(f"**No such folder:** `{run_dir}`"), kind="danger"))
    try:
        history = plots.read_history(run_dir)
    except GeoSDMError:
        history = None  # no epoch finished yet
    n_epochs = 0 if history is None else history.height
    best_path = run_dir / "checkpoint_best.pt"
    best_stamp = best_path.stat().st_mtime_ns if best_path.is_file() else None
    return best_path, best_stamp, history, n_epochs, run_dir


@app.cell
def _(history, mo, n_epochs, plots, run_dir, runlog):
    if n_epochs == 0:
        curves = None
        curves_view = mo.callout(mo.md(f"Waiting for the first epoch of `{run_dir}`…"), kind="info")
    else:
        curves = plots.training_chart(history, columns=3, width=250, height=160)
        _last = history.row(-1, named=True)
        _f = lambda k: "n/a" if _last.get(k) is None else f"{_last[k]:.4f}"
        curves_view = mo.vstack(
            [
                mo.md(
                    f"**{n_epochs} epoch{'s' * (n_epochs != 1)}** · last GeoScore {_f('val_geoscore')} · "
                    f"best {_f('best_geoscore')} · validation loss {_f('val_loss')}"
                ),
                # GeoScore's parts, named and read as the table of parts says (geosdm.geoscore.GEOSCORE_PARTS)
                mo.md("GeoScore's parts: " + runlog.geoscore_lines(_last.get, indent="", per_line=99)[0]),
                curves,
            ]
        )
    return curves, curves_view


@app.cell
def _(best_path, best_stamp, device, load_model, mo):
    mo.stop(best_stamp is None, mo.callout(mo.md("No best checkpoint yet: the map appears after the first epoch."), kind="info"))
    try:
        pred, cells, yearly = load_model(str(best_path), best_stamp, device)
    except (ValueError, OSError) as e:
        mo.stop(True, mo.callout(mo.md(f"**Cannot load** `{best_path}`: {e}"), kind="warn"))
    return cells, pred, yearly


@app.cell
def _(demo, get_species, mo, np, pred, set_species, yearly):
    # the species choice survives refreshes and new checkpoints (kept in a state)
    _chosen = get_species() if get_species() in pred.vocab else pred.vocab[int(np.argmax(yearly.mean(0)))]
    species_dropdown = demo.species_picker(mo, pred, _chosen, on_change=set_species)
    species = _chosen
    return species, species_dropdown


@app.cell
def _(best_path, best_stamp, cells, device, maps, pred, species, week_probs, week_slider):
    week = int(week_slider.value)
    species_map = maps.probability_map(
        pred, species, week, cells, probs=week_probs(str(best_path), best_stamp, device, week), width=620, height=380
    )
    map_note = f"Best checkpoint: epoch {pred.epoch}, {pred.n_species} species, {len(cells):,} cells"
    return map_note, species_map, week


@app.cell
def _(curves_view, map_note, mo, species_dropdown, species_map, week_slider):
    mo.vstack(
        [
            curves_view,
            mo.md(f"## Map from the best checkpoint\n{map_note}"),
            mo.hstack([species_dropdown, week_slider], widths=[2, 1]),
            species_map,
        ]
    )
    return


if __name__ == "__main__":
    app.run()
