"""Reports for people, rendered from Jinja2 templates shipped with this package (`templates/`).

One renderer serves every report: a report is a template per format (`<report>.md.j2`, `<report>.html.j2`) and a
context of plain data. HTML templates extend `base.html.j2` (page skeleton and shared style) and are autoescaped,
so whatever a user typed (a promotion reason, a model name) cannot inject markup; Markdown templates are not.
Number formatting lives in filters (`num`, `delta`, `md_cell`, `absent`, `data_uri`) so that every report shows
figures the same way. See `render.py`.
"""

from serving.reports.render import FORMATS, Format, environment, render, render_report

__all__ = ["FORMATS", "Format", "environment", "render", "render_report"]
