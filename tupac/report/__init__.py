"""Outputs people look at: the static HTML report and GeoJSON for QuPath.

- :func:`tupac.report.qupath.export_run`: ``RUN/qupath/<id>.tumor.geojson`` / ``<id>.mitoses.geojson``.
- :func:`tupac.report.html.build_report`: ``RUN/report/index.html`` with its PNG figures.

Nothing heavy is imported here.
"""
