"""The one report renderer: a named template plus a context of plain data -> Markdown or HTML text.

Why templates instead of string building: the layout of a report is then in one readable file per format, the
HTML is escaped by the engine (autoescape) rather than by remembering `html.escape` at every cell, and a new
report (experiment results, customer segments, privacy) is a new template and a context, not new code.

Conventions every template can rely on:
- `<report>.html.j2` templates are autoescaped and extend `base.html.j2` (blocks `title` and `body`; the shared
  style sheet is in the base). `<report>.md.j2` templates are not escaped.
- Undefined context keys are errors (StrictUndefined): a context that misses a key fails at render time, not as
  an empty cell nobody notices.
- Filters: `num` (fixed decimals; None -> "-", NaN -> "NaN"), `delta` (the same, signed), `absent` (None ->
  "(absent)"), `md_cell` (`absent`, then `|` escaped and newlines flattened for a Markdown table cell),
  `data_uri` (PNG bytes -> a `data:image/png;base64,...` URI, so HTML reports stay self-contained).
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import jinja2

Format = Literal["md", "html"]
FORMATS: tuple[Format, ...] = ("md", "html")
HTML_SUFFIX = ".html.j2"


def num(value: float | None, digits: int = 5, *, signed: bool = False) -> str:
    """A figure with `digits` decimals; "-" where there is none (no champion), "NaN" where it is undefined.
    `signed`: the sign always shown, so that a change reads as a change."""
    if value is None:
        return "-"
    v = float(value)
    if math.isnan(v):
        return "NaN"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def delta(value: float | None, digits: int = 5) -> str:
    """`num` with the sign always shown (the template filter for differences)."""
    return num(value, digits, signed=True)


def absent(value: Any) -> Any:
    """None as "(absent)": a key one side of a comparison lacks is not the same as an empty value."""
    return "(absent)" if value is None else value


def md_cell(value: Any) -> str:
    """A value safe inside a Markdown table cell: `|` escaped, newlines flattened, None as "(absent)"."""
    return str(absent(value)).replace("|", "\\|").replace("\n", " ")


def data_uri(png: bytes, mime: str = "image/png") -> str:
    """Image bytes as a data URI, so an HTML report is one file that opens anywhere (MLflow UI, mail)."""
    return f"data:{mime};base64,{base64.b64encode(png).decode()}"


FILTERS = {"num": num, "delta": delta, "absent": absent, "md_cell": md_cell, "data_uri": data_uri}


def _autoescape(name: str | None) -> bool:
    """Escape HTML templates (and the base and macros they include), never Markdown ones."""
    return name is not None and name.endswith(HTML_SUFFIX)


@functools.cache
def environment(package: str = "serving.reports") -> jinja2.Environment:
    """The Jinja2 environment over `package`'s `templates/` directory (one per package, built once per process).

    Every template of the project (this package's reports, the CLI's generated config docs) renders through it,
    so all share the same rules: strict undefined, trimmed blocks, the filters above, HTML-only escaping.
    PackageLoader finds the templates through the import system, so an editable checkout and an installed wheel
    (where they are package data) behave the same."""
    env = jinja2.Environment(
        # another package's templates first, then this one's: its reports extend `base.html.j2` and use the macros
        loader=jinja2.PackageLoader(package, "templates") if package == "serving.reports" else jinja2.ChoiceLoader(
            [jinja2.PackageLoader(package, "templates"), jinja2.PackageLoader("serving.reports", "templates")]),
        autoescape=_autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    return env


def render(template: str, context: Mapping[str, Any], package: str = "serving.reports") -> str:
    """Render the template named `template` (e.g. "review.html.j2") of `package` with `context`."""
    return environment(package).get_template(template).render(**context)


def render_report(report: str, context: Mapping[str, Any], formats: Iterable[Format] = FORMATS,
                  package: str = "serving.reports") -> dict[str, str]:
    """Render report `report` in each of `formats` from the same context: {"md": ..., "html": ...}. Rendering both
    from one context is what keeps the Markdown and the HTML of a report saying the same thing. `package`: whose
    `templates/` hold the report (a package above serving keeps its own, extending this one's base)."""
    return {fmt: render(f"{report}.{fmt}.j2", context, package) for fmt in formats}
