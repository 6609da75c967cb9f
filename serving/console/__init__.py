"""The marketers' console: a read-only web dashboard on the serving app, under `/console` (docs/cli.md#console).

Why on the serving app: it is the one process of a deployment that is already running, reachable and
authenticated, and it already knows where every output of the scenario lives; a separate web server would be one
more thing to deploy and secure. The console never writes: it reads what the other commands left (registry,
experiments, segments, privacy releases) and shows aggregates only.

- `settings`: `ConsoleSettings`, what the console reads (resolved from the app's settings once).
- `auth`: the token and the stateless session cookie derived from it.
- `data`: the readers; `figures`: the Plotly charts; `pages`: each page's context, rendered through
  serving.reports (templates `console_*.html.j2`).
- `router`: the routes, mounted by serving.app.build_api.
"""

from serving.console.router import mount_console
from serving.console.settings import ConsoleSettings, console_settings

__all__ = ["ConsoleSettings", "console_settings", "mount_console"]
