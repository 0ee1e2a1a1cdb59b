"""marimo apps of geosdm (hand-written, not exported from notebooks): `explorer` and `calibration`.

Run them with `geosdm_app explorer` / `geosdm_app calibration` (see `geosdm.cli.app_main`)."""
