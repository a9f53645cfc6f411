"""The report's `index.html`: one self-contained page (images embedded as data URIs, inline CSS and script,
no network access) with the plots, a sortable table of runs and objectives, the dominance relations between
runs, the recipe differences and the run folders that were skipped.

Sorting: clicking a column header of a table with class ``sortable`` sorts its rows by that column (numbers
by value from the cell's ``data-sort`` attribute, text otherwise; empty cells last), clicking again reverses;
the header's ``aria-sort`` says the current order.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

MATRIX_MAX_RUNS = 25  # above this many runs the page lists dominance instead of drawing the matrix

SECTION_TITLES = {
    "front": (
        "Pareto front",
        "Every evaluated checkpoint (grey), each run's final point (coloured), the points no "
        "other point dominates in all objectives (ringed), the pair's own 2-D front (dashed) and the "
        "reference point of the hypervolume.",
    ),
    "trajectories": ("Trajectories", "Each run's way through objective space over its training steps."),
    "rewards": ("Reward curves", "Per objective, over training steps."),
    "weights": ("Weights and multipliers", "Objective weights and what the weighting strategy moved."),
    "overoptimization": (
        "Overoptimization",
        "Held-out gold objective against the proxies over KL from the "
        "reference; the star marks where gold peaks (the proxy point).",
    ),
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
td.text, th.text { text-align: left; }
table.sortable th { cursor: pointer; background: #f4f4f4; user-select: none; white-space: nowrap; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.front td:first-child { font-weight: bold; }
.summary td { text-align: left; } .note { color: #8a5300; font-size: 0.85em; }
.scroll { overflow-x: auto; } code { background: #f4f4f4; padding: 0 3px; }
"""

SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-sort');
    if (v === null) { v = cell.textContent.trim(); }
    if (v === '') { return null; }
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function compare(a, b) {
    if (a === null && b === null) { return 0; }
    if (a === null) { return 1; }
    if (b === null) { return -1; }
    if (typeof a === typeof b) { return a < b ? -1 : (a > b ? 1 : 0); }
    return typeof a === 'number' ? -1 : 1;
  }
  function sortBy(table, col, th) {
    var ascending = th.getAttribute('aria-sort') !== 'ascending';
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (row, i) { return {row: row, key: key(row.cells[col]), i: i}; });
    keyed.sort(function (x, y) {
      var c = compare(x.key, y.key);
      if (c !== 0 && x.key !== null && y.key !== null && !ascending) { c = -c; }
      return c !== 0 ? c : x.i - y.i;
    });
    keyed.forEach(function (k) { body.appendChild(k.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.setAttribute('tabindex', '0');
      th.addEventListener('click', function () { sortBy(table, col, th); });
      th.addEventListener('keydown', function (e) {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortBy(table, col, th); }
      });
    });
  });
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell's text: numbers to `digits` significant digits, None/NaN as an empty string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def _num_cell(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return '<td data-sort=""></td>'
    return f'<td data-sort="{value!r}">{_e(fmt(value, digits))}</td>'


def _text_cell(value: Any) -> str:
    return f'<td class="text">{_e(fmt(value))}</td>'


def image_data_uri(path: str | Path) -> str:
    """The PNG at `path` as a base64 data URI (how images are embedded: the page needs no other file)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _runs_table(data: dict[str, Any]) -> str:
    objectives, gold = data["objectives"], data["gold"]
    head = ['<th class="text">run</th>', '<th class="text">strategy</th>', "<th>final step</th>"]
    head += [f"<th>{_e(o)}</th>" for o in objectives]
    head += [f"<th>gold: {_e(g)}</th>" for g in gold]
    head += [
        "<th>KL</th>",
        "<th>HV contribution</th>",
        '<th class="text">on front</th>',
        "<th>dominated by</th>",
        "<th>dominates</th>",
    ]
    rows = []
    for run in data["runs"]:
        cells = [_text_cell(run["name"]), _text_cell(run["strategy"]), _num_cell(run["final_step"])]
        cells += [_num_cell(run["final"].get(o)) for o in objectives]
        cells += [_num_cell((run.get("final_gold") or {}).get(g)) for g in gold]
        cells += [_num_cell(run.get("final_kl")), _num_cell(run["hypervolume_contribution"])]
        cells += [
            _text_cell("yes" if run["final_on_front"] else "no"),
            _num_cell(run["dominated_by_count"]),
            _num_cell(run["dominates_count"]),
        ]
        css = ' class="front"' if run["final_on_front"] else ""
        rows.append(f"<tr{css}>{''.join(cells)}</tr>")
    return (
        '<div class="scroll"><table id="runs" class="sortable"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _dominance(data: dict[str, Any]) -> str:
    runs = data["runs"]
    front = [r["name"] for r in runs if r["final_on_front"]]
    parts = [f"<p>Final points on the front ({len(front)} of {len(runs)}): {_e(', '.join(front))}.</p>"]
    dominated = [r for r in runs if r["dominated_by"]]
    if dominated:
        items = "".join(
            f"<li><b>{_e(r['name'])}</b> is dominated by {_e(', '.join(r['dominated_by']))}"
            + (
                f" (and {r['dominated_by_count'] - len(r['dominated_by'])} runs off the front)"
                if r["dominated_by_count"] > len(r["dominated_by"])
                else ""
            )
            + "</li>"
            for r in dominated
        )
        parts.append(f'<ul id="dominance">{items}</ul>')
    else:
        parts.append("<p>No run's final point dominates another's.</p>")
    if 1 < len(runs) <= MATRIX_MAX_RUNS:
        names = [r["name"] for r in runs]
        matrix = _matrix_rows(data, names)
        head = '<th class="text">row dominates column</th>' + "".join(f"<th>{_e(n)}</th>" for n in names)
        parts.append(
            f'<div class="scroll"><table id="dominance-matrix"><thead><tr>{head}</tr></thead><tbody>'
            f"{matrix}</tbody></table></div>"
        )
    return "".join(parts)


def _matrix_rows(data: dict[str, Any], names: list[str]) -> str:
    finals = {r["name"]: [r["final"][o] for o in data["objectives"]] for r in data["runs"]}
    rows = []
    for a in names:
        cells = [f'<td class="text">{_e(a)}</td>']
        for b in names:
            pa, pb = finals[a], finals[b]
            dom = all(x >= y for x, y in zip(pa, pb)) and any(x > y for x, y in zip(pa, pb))
            cells.append(f"<td>{'&#10003;' if dom else ''}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return "".join(rows)


def _differences(data: dict[str, Any]) -> str:
    diffs = data["recipe_differences"]
    if not diffs:
        return "<p>The runs' recipes are identical (apart from their output folders).</p>"
    keys = list(diffs)
    head = '<th class="text">run</th>' + "".join(f'<th class="text">{_e(k)}</th>' for k in keys)
    rows = []
    for run in data["runs"]:
        cells = [_text_cell(run["name"])]
        for key in keys:
            value = diffs[key].get(run["name"])
            if isinstance(value, int | float) and not isinstance(value, bool):
                cells.append(_num_cell(value, 6))
            else:
                cells.append(_text_cell("" if value is None else value))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table id="recipes" class="sortable"><thead><tr>{head}</tr></thead><tbody>'
        f"{''.join(rows)}</tbody></table></div>"
    )


def _skipped(data: dict[str, Any]) -> str:
    if not data["skipped"]:
        return "<p>None.</p>"
    items = "".join(f"<li><code>{_e(s['path'])}</code>: {_e(s['reason'])}</li>" for s in data["skipped"])
    return f'<ul id="skipped">{items}</ul>'


def _notes(data: dict[str, Any]) -> str:
    items = "".join(f"<li><b>{_e(r['name'])}</b>: {_e(note)}</li>" for r in data["runs"] for note in r.get("notes", []))
    return f'<ul class="note">{items}</ul>' if items else ""


def render_html(data: dict[str, Any], plots: dict[str, list[Path]], title: str | None = None) -> str:
    """The whole page for pareto.json's `data` and the plot files (embedded), as a string."""
    title = title or f"Pareto report: {', '.join(data['objectives'])}"
    summary = [
        ("runs", f"{len(data['runs'])} ({len(data['skipped'])} skipped)"),
        ("points", str(len(data["points"]))),
        ("objectives (maximised)", ", ".join(data["objectives"])),
        ("gold (held out)", ", ".join(data["gold"]) or "none"),
        ("hypervolume", fmt(data["hypervolume"], 6)),
        ("reference point", f"{', '.join(fmt(v, 6) for v in data['reference_point'])} ({data['reference']})"),
        ("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        '<link rel="icon" href="data:,">',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<table class="summary"><tbody>'
        + "".join(f'<tr><th class="text">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in summary)
        + "</tbody></table>",
        '<p>Machine-readable: <a href="pareto.json">pareto.json</a>.</p>',
    ]
    for section, paths in plots.items():
        heading, caption = SECTION_TITLES.get(section, (section, ""))
        out.append(f'<h2 id="{_e(section)}">{_e(heading)}</h2>')
        for path in paths:
            out.append(
                f'<figure><img class="plot" src="{image_data_uri(path)}" alt="{_e(Path(path).stem)}">'
                f"<figcaption>{_e(Path(path).name)}: {_e(caption)}</figcaption></figure>"
            )
    out += [
        '<h2 id="runs-table">Runs</h2>',
        "<p>Final evaluated checkpoint of each run; click a column header to sort. HV contribution: hypervolume "
        "lost if the run's points were removed.</p>",
        _runs_table(data),
        _notes(data),
        '<h2 id="dominance-relations">Dominance</h2>',
        _dominance(data),
        '<h2 id="recipe-differences">Recipe differences</h2>',
        _differences(data),
        '<h2 id="skipped-runs">Skipped run folders</h2>',
        _skipped(data),
        f'<script type="application/json" id="report-data">{_json_for_script(data)}</script>',
        f"<script>{SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


def _json_for_script(data: dict[str, Any]) -> str:
    summary = {
        "objectives": data["objectives"],
        "hypervolume": data["hypervolume"],
        "runs": [r["name"] for r in data["runs"]],
    }
    return json.dumps(summary).replace("</", "<\\/")
