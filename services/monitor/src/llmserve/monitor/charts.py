"""Small inline-SVG line charts and probe strips for the status page: no script, no CDN, no library.

A chart is drawn on the server from the history's points, so the page works in any browser and
with scripts off; the page reloads itself to move the charts on.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

from llmserve.monitor.history import LoadHistory, ProbeMark

WIDTH, HEIGHT = 300, 90
_PAD_TOP, _PAD_BOTTOM = 16, 14


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    values: list[float | None]
    dashed: bool = False


def _format(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    if value >= 100:
        return f"{value:.0f}{unit}"
    return f"{value:.1f}{unit}" if value % 1 else f"{value:.0f}{unit}"


def line_chart(title: str, series: list[Series], unit: str = "", slots: int = 0, span_label: str = "") -> str:
    """An SVG chart of the series over the same time steps (oldest first, `slots` steps wide, a short
    history drawn at the right); None values break the line. `span_label` names the left edge's age."""
    slots = max(slots, max((len(s.values) for s in series), default=0), 2)
    peak = max((v for s in series for v in s.values if v is not None), default=0.0)
    top = peak * 1.1 if peak > 0 else 1.0
    plot_h = HEIGHT - _PAD_TOP - _PAD_BOTTOM

    def xy(i: int, v: float) -> str:
        x = WIDTH * i / (slots - 1)
        y = _PAD_TOP + plot_h * (1 - v / top)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg class="chart" data-title="{html.escape(title)}" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f"<title>{html.escape(title)}</title>",
        f'<rect x="0" y="{_PAD_TOP}" width="{WIDTH}" height="{plot_h}" fill="#fafafa" stroke="#e0e0e0"/>',
        f'<text x="2" y="11" font-size="11" fill="#333">{html.escape(title)}</text>',
        f'<text x="4" y="{_PAD_TOP + 10}" font-size="9" fill="#777">max {_format(peak, unit)}</text>',
    ]
    if span_label:
        parts.append(f'<text x="1" y="{HEIGHT - 3}" font-size="9" fill="#777">−{html.escape(span_label)}</text>')
        parts.append(f'<text x="{WIDTH - 1}" y="{HEIGHT - 3}" font-size="9" fill="#777" text-anchor="end">now</text>')
    legend_x = WIDTH - 2
    for s in reversed(series):
        last = next((v for v in reversed(s.values) if v is not None), None)
        text = f"{s.label} {_format(last, unit)}" if last is not None else f"{s.label} –"
        parts.append(f'<text x="{legend_x}" y="11" font-size="10" fill="{s.color}" text-anchor="end">{html.escape(text)}</text>')
        legend_x -= 7 * len(text) + 8
    offset = slots - len(series[0].values) if series else 0  # a short history is drawn at the right
    for s in series:
        run: list[str] = []
        runs: list[list[str]] = []
        for i, v in enumerate(s.values):
            if v is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(xy(i + offset, v))
        if run:
            runs.append(run)
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        for points in runs:
            if len(points) == 1:
                x, y = points[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="1.8" fill="{s.color}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="1.5"{dash} points="{" ".join(points)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def probe_strip(key: str, marks: list[ProbeMark], window_s: float, now: float) -> str:
    """One row of cells, one per probe in the window, green when it passed and red when it failed."""
    cells = []
    for mark in marks:
        x = WIDTH * (1 - (now - mark.at) / window_s)
        color = "#2e7d32" if mark.ok else "#c62828"
        verdict = "passed" if mark.ok else "FAILED"
        cells.append(
            f'<rect class="probe {"ok" if mark.ok else "failed"}" x="{max(0.0, x - 4):.1f}" y="2" width="4" height="12" fill="{color}">'
            f"<title>{html.escape(key)} {verdict} in {mark.latency_s:.2f} s, {time.strftime('%H:%M:%S', time.localtime(mark.at))}</title></rect>"
        )
    return (
        f'<svg class="probes" width="{WIDTH}" height="16" viewBox="0 0 {WIDTH} 16"><rect x="0" y="1" width="{WIDTH}" height="14" '
        f'fill="#fafafa" stroke="#e0e0e0"/>{"".join(cells)}</svg>'
    )


def history_section(history: LoadHistory, now: float | None = None) -> str:
    """The page's "last minutes" section: per model, tokens/s, TTFT p50/p95, queue depth and busy
    slots; per version, its probe strip."""
    now = time.time() if now is None else now
    points = list(history.points)
    slots = history.points.maxlen or len(points)
    names = sorted({name for p in points for name in p.models})
    minutes = round(history.window_s / 60)
    span = f"{minutes} min"
    rows = []
    for name in names:
        def values(field: str, name: str = name) -> list[float | None]:
            return [getattr(p.models[name], field) if name in p.models else None for p in points]

        charts = [
            line_chart("tokens/s", [Series("", "#1565c0", values("tokens_per_s"))], slots=slots, span_label=span),
            line_chart("time to first token", [Series("p50", "#2e7d32", values("ttft_p50_s")), Series("p95", "#ef6c00", values("ttft_p95_s"))],
                       unit="ms", slots=slots, span_label=span),
            line_chart("queued jobs", [Series("", "#6a1b9a", values("queued"))], slots=slots, span_label=span),
            line_chart("busy slots", [Series("busy", "#00838f", values("slots_busy")), Series("of", "#9e9e9e", values("slots_total"), dashed=True)],
                       slots=slots, span_label=span),
        ]
        rows.append(f'<h3>{html.escape(name)}</h3><div class="charts" data-model="{html.escape(name)}">{"".join(charts)}</div>')
    strips = "".join(
        f'<div class="probe-row"><span>{html.escape(key)}</span>{probe_strip(key, list(marks), history.window_s, now)}</div>'
        for key, marks in sorted(history.probes.items())
    )
    body = "".join(rows) or "<p>No samples yet.</p>"
    probes = f"<h3>Probes</h3>{strips}" if strips else ""
    return f'<h2>Last {minutes} minutes</h2><p class="note">one point per {history.step_s:g} s</p>{body}{probes}'
