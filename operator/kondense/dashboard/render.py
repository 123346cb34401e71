"""The dashboard's pages as HTML strings (pure: dicts in, text out; nothing here reads the network).

Every value that comes from the cluster or Prometheus is escaped. Plots are inline SVG; the page
needs no script and nothing from the network (it refreshes itself with a meta refresh).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from kondense.dashboard.progress import CompressionProgress, format_seconds
from kondense.dashboard.timeline import (
    CheckPoint,
    Decision,
    WeightStep,
    check_points,
    decisions,
    event_time,
    parse_time,
    time_range,
    weight_steps,
)

SLI_UNITS = {"p99LatencyMs": "ms", "errorRate": "", "accuracyDelta": "", "requests": "req"}


@dataclass(frozen=True)
class SLISeries:
    """One SLI of the canary over time, read with the operator's own PromQL (``query_range``)."""

    sli: str
    threshold: float | None
    points: list[tuple[float, float]]  # (unix seconds, value); NaN values are gaps
    query: str | None = None


@dataclass(frozen=True)
class ModelView:
    obj: Mapping[str, Any]
    events: Sequence[Mapping[str, Any]] = ()
    progress: CompressionProgress | None = None
    series: Sequence[SLISeries] = ()
    problems: Sequence[str] = ()  # banners: what could not be read
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def fmt(value: Any, spec: str = ".4g", suffix: str = "") -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return e(value)
    if math.isinf(number) or number >= 1e300:
        return "+Inf"
    return f"{number:{spec}}{suffix}"


def stamp(value: Any) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS`` UTC (whole seconds); what cannot be read, as it is."""
    when = value if isinstance(value, datetime) else parse_time(value)
    if when is None:
        return "" if value is None else str(value)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------------------------------------
# the page frame

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}header .where{color:#aab;font-size:.9em}
main{padding:1em 1.5em;max-width:1200px}
h1{font-size:1.4em;margin:.3em 0}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;font-size:.9em}
th,td{border-bottom:1px solid #e3e6eb;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#eef0f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:.7em 1em;margin:.6em 0;border-radius:4px;background:#fdecea;border:1px solid #f5c2c0;color:#8a1c16}
.banner.info{background:#eef4fd;border-color:#c4d8f5;color:#1d3f73}
.phase{display:inline-block;padding:.05em .5em;border-radius:3px;font-size:.85em;background:#e3e6eb}
.phase.Promoted,.phase.Succeeded{background:#d7f2df;color:#14532d}
.phase.RolledBack,.phase.Failed,.phase.Rejected{background:#fbe0de;color:#7f1d1d}
.phase.Canary,.phase.Baking,.phase.WaitingForApproval,.phase.Running{background:#fff1cc;color:#6b4a00}
.muted{color:#6b7280}.bar{background:#e3e6eb;border-radius:3px;height:.7em;width:14em;display:inline-block}
.bar span{display:block;height:100%;background:#3b82f6;border-radius:3px}
svg{background:#fff;border:1px solid #e3e6eb}svg text{font-size:11px;fill:#374151}
.decisions li{margin:.15em 0}.decisions .Warning{color:#8a1c16}
footer{color:#6b7280;font-size:.8em;padding:1em 1.5em}
"""


def page(title: str, body: str, *, refresh: int | None, problems: Sequence[str] = (), where: str = "") -> str:
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    banners = "".join(f'<div class="banner" role="alert">{e(p)}</div>' for p in problems)
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8">{meta}'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · kondense</title><style>{CSS}</style></head><body>"
        f'<header><a href="/">kondense</a><span class="where">{e(where)}</span></header>'
        f"<main>{banners}{body}</main>"
        f"<footer>read-only view{f'; refreshes every {int(refresh)} s' if refresh else ''}</footer>"
        "</body></html>"
    )


def phase_badge(phase: Any) -> str:
    text = str(phase or "Pending")
    return f'<span class="phase {e(text)}">{e(text)}</span>'


def model_href(namespace: str, name: str) -> str:
    return f"/models/{quote(namespace, safe='')}/{quote(name, safe='')}"


# ------------------------------------------------------------------------------------------------
# the list of CompressedModels


def serving_variant(obj: Mapping[str, Any]) -> tuple[str, int | None]:
    """What the model serves as its new variant: the canary and its weight while there is one, else
    the variant stable serves (100 %), else the base model."""
    status = obj.get("status") or {}
    canary = status.get("canary") or {}
    if canary.get("variant") and status.get("phase") in ("Canary", "WaitingForApproval"):
        return str(canary["variant"]), int(canary.get("weight") or 0)
    stable = (status.get("stable") or {}).get("variant")
    if stable:
        return str(stable), 100
    return "base", None


def models_table(models: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """One row per model: the columns of ``kubectl get cmodel`` (phase, selected variant, canary
    weight) and what stable serves."""
    if not models:
        return '<p class="muted" id="no-models">No CompressedModels.</p>'
    rows = []
    for obj in models:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        canary = status.get("canary") or {}
        weight = canary.get("weight") if canary else None
        stable = (status.get("stable") or {}).get("variant") or ("base" if status.get("stable") else None)
        rows.append(
            f'<tr class="model" data-name="{e(name)}" data-namespace="{e(namespace)}">'
            f"<td>{e(namespace)}</td>"
            f'<td><a href="{e(model_href(namespace, name))}">{e(name)}</a></td>'
            f'<td class="phase-cell">{phase_badge(status.get("phase"))}</td>'
            f'<td class="variant-cell">{e(status.get("selectedVariant") or "-")}</td>'
            f'<td class="num weight-cell">{"-" if weight is None else f"{e(weight)}%"}</td>'
            f'<td class="stable-cell">{e(stable or "-")}</td>'
            f"<td>{e(status.get('message'))}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("namespace", "name", "phase", "variant", "canary weight", "stable serves", "message")
    )
    return f'<table id="models"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def models_page(
    models: Sequence[Mapping[str, Any]],
    namespace: str | None,
    *,
    refresh: int | None,
    problems: Sequence[str] = (),
    now: datetime | None = None,
) -> str:
    where = f"namespace {namespace}" if namespace else "all namespaces"
    body = f"<h1>CompressedModels</h1>{models_table(models, now or datetime.now(UTC))}"
    return page("CompressedModels", body, refresh=refresh, problems=problems, where=where)


# ------------------------------------------------------------------------------------------------
# plotting helpers


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round numbers covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


@dataclass(frozen=True)
class Scale:
    lo: float
    hi: float
    a: float  # pixel at lo
    b: float  # pixel at hi

    def __call__(self, value: float) -> float:
        if self.hi == self.lo:
            return (self.a + self.b) / 2
        return self.a + (value - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def _axis_label(value: float) -> str:
    return f"{value:.3g}"


# ------------------------------------------------------------------------------------------------
# the Pareto plot: size against accuracy delta, latency as the marker size


@dataclass(frozen=True)
class ParetoPoint:
    name: str
    size: float  # sizeRatio: variant bytes / base bytes
    delta: float  # accuracyDelta (lower is better)
    p50: float | None
    phase: str
    selected: bool
    frontier: bool = False


def pareto_points(status: Mapping[str, Any]) -> tuple[list[ParetoPoint], list[str]]:
    """One point per variant with a size and an accuracy delta; the names of those without."""
    selected = status.get("selectedVariant") or (status.get("stable") or {}).get("variant")
    points, missing = [], []
    for v in status.get("variants") or []:
        metrics = v.get("metrics") or {}
        size, delta = metrics.get("sizeRatio"), metrics.get("accuracyDelta")
        if not isinstance(size, int | float) or not isinstance(delta, int | float):
            missing.append(str(v.get("name")))
            continue
        p50 = metrics.get("p50Ms")
        points.append(
            ParetoPoint(
                name=str(v.get("name")),
                size=float(size),
                delta=float(delta),
                p50=float(p50) if isinstance(p50, int | float) else None,
                phase=str(v.get("phase") or ""),
                selected=v.get("name") == selected,
            )
        )
    # the frontier: no other point is at least as small and as accurate, and better in one
    marked = []
    for p in points:
        dominated = any(
            q is not p and q.size <= p.size and q.delta <= p.delta and (q.size < p.size or q.delta < p.delta)
            for q in points
        )
        marked.append(replace(p, frontier=not dominated))
    return marked, missing


def pareto_svg(status: Mapping[str, Any], budget: float | None, width: int = 560, height: int = 340) -> str:
    points, missing = pareto_points(status)
    note = f'<p class="muted">not plotted (no metrics yet): {e(", ".join(missing))}</p>' if missing else ""
    if not points:
        return '<p class="muted" id="pareto-empty">No evaluated variants yet.</p>' + note
    left, right, top, bottom = 62, 20, 16, 44
    sizes = [p.size for p in points] + [1.0]  # the base model is at size 1, delta 0
    deltas = [p.delta for p in points] + [0.0] + ([budget] if budget is not None else [])
    xs = Scale(0.0, max(sizes) * 1.08, left, width - right)
    dlo, dhi = min(min(deltas), 0.0), max(deltas)
    pad = (dhi - dlo) * 0.12 or 0.01
    ys = Scale(dlo - pad * 0.3, dhi + pad, height - bottom, top)
    p50s = [p.p50 for p in points if p.p50 is not None]
    biggest = max(p50s) if p50s else None
    parts = [
        f'<svg id="pareto" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="variants: size against accuracy delta">'
    ]
    for t in nice_ticks(xs.lo, xs.hi):
        x = xs(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="#eef0f4"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle">{_axis_label(t)}</text>'
        )
    for t in nice_ticks(ys.lo, ys.hi):
        if not ys.lo <= t <= ys.hi:
            continue
        y = ys(t)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#eef0f4"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_axis_label(t)}</text>')
    parts.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 8}" text-anchor="middle">'
        "size (variant / base bytes)</text>"
        f'<text x="14" y="{(top + height - bottom) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2:.0f})">accuracy delta (lower is better)</text>'
    )
    if budget is not None:
        y = ys(budget)
        parts.append(
            f'<line class="budget" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            f'stroke="#dc2626" stroke-dasharray="5 4"><title>offline budget {fmt(budget)}</title></line>'
            f'<text x="{width - right - 4}" y="{y - 4:.1f}" text-anchor="end" fill="#dc2626">budget {fmt(budget)}</text>'
        )
    frontier = sorted((p for p in points if p.frontier), key=lambda p: p.size)
    if len(frontier) > 1:
        path = " ".join(f"{xs(p.size):.1f},{ys(p.delta):.1f}" for p in frontier)
        parts.append(
            f'<polyline class="frontier" points="{path}" fill="none" stroke="#93c5fd" stroke-width="1.5"/>'
        )
    bx, by = xs(1.0), ys(0.0)
    parts.append(
        f'<rect class="base" x="{bx - 5:.1f}" y="{by - 5:.1f}" width="10" height="10" fill="#9ca3af">'
        "<title>base model (size 1, delta 0)</title></rect>"
        f'<text x="{bx:.1f}" y="{by - 9:.1f}" text-anchor="middle">base</text>'
    )
    for p in points:
        radius = 5.0 if p.p50 is None or not biggest else 4.0 + 10.0 * math.sqrt(p.p50 / biggest)
        colour = {"Promoted": "#16a34a", "RolledBack": "#dc2626", "Rejected": "#f97316", "Failed": "#dc2626"}
        fill = colour.get(p.phase, "#3b82f6")
        x, y = xs(p.size), ys(p.delta)
        classes = "variant selected" if p.selected else "variant"
        title = (
            f"{p.name} ({p.phase}): size {fmt(p.size, '.3f')}x, accuracy delta {fmt(p.delta)}, "
            f"p50 {fmt(p.p50, '.3f', ' ms')}{' — selected' if p.selected else ''}"
        )
        parts.append(
            f'<circle class="{classes}" data-variant="{e(p.name)}" cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" '
            f'fill="{fill}" fill-opacity="0.75" stroke="{"#111827" if p.selected else fill}" '
            f'stroke-width="{3 if p.selected else 1}"><title>{e(title)}</title></circle>'
            f'<text x="{x + radius + 3:.1f}" y="{y + 4:.1f}">{e(p.name)}{" ★" if p.selected else ""}</text>'
        )
    parts.append("</svg>")
    legend = (
        '<p class="muted">One point per evaluated variant; marker area grows with the p50 latency '
        "measured offline; ★ the selected variant; blue line: the Pareto frontier.</p>"
    )
    return "".join(parts) + legend + note


# ------------------------------------------------------------------------------------------------
# the canary timeline: weight steps, each SLI against its threshold, every decision


def _time_ticks(t0: datetime, t1: datetime, count: int = 6) -> list[float]:
    return [
        t for t in nice_ticks(t0.timestamp(), t1.timestamp(), count) if t0.timestamp() <= t <= t1.timestamp()
    ]


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def timeline_svg(
    steps: Sequence[WeightStep],
    marks: Sequence[Decision],
    checks: Sequence[CheckPoint],
    series: Sequence[SLISeries],
    t0: datetime,
    t1: datetime,
    now: datetime,
    width: int = 900,
) -> str:
    left, right, panel, gap, top = 70, 20, 110, 26, 34
    slis = [s.sli for s in series]
    for c in checks:  # relative gates and webhooks: only their checks, no series
        if c.sli not in slis and c.sli != "requests":
            slis.append(c.sli)
    height = top + (panel + gap) * (1 + len(slis)) + 10
    xs = Scale(t0.timestamp(), t1.timestamp(), left, width - right)
    parts = [
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="canary timeline">'
    ]
    bottom_all = height - 10
    for t in _time_ticks(t0, t1):
        x = xs(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom_all}" stroke="#f1f2f5"/>')
        parts.append(f'<text x="{x:.1f}" y="{top - 20}" text-anchor="middle">{_clock(t)}</text>')
    # decisions: a vertical line across every panel, numbered as in the list below the plot
    for number, d in enumerate(marks, start=1):
        x = xs(d.time.timestamp())
        colour = "#dc2626" if d.warning else "#16a34a" if d.reason in ("Promoted", "Baking") else "#6b7280"
        parts.append(
            f'<g class="decision" data-reason="{e(d.reason)}"><title>{e(_clock(d.time.timestamp()))} '
            f"{e(d.reason)}: {e(d.message)}</title>"
            f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{bottom_all}" stroke="{colour}" '
            f'stroke-dasharray="2 3"/><text x="{x + 2:.1f}" y="{top - 6}" fill="{colour}">{number}</text></g>'
        )
    # panel 1: the canary weight
    y0 = top
    ys = Scale(0, 100, y0 + panel, y0)
    parts.append(_panel_frame("canary weight %", y0, panel, left, width - right, [0, 25, 50, 75, 100], ys))
    if steps:
        points = []
        for i, s in enumerate(steps):
            x = xs(s.time.timestamp())
            if i:
                points.append(f"{x:.1f},{ys(steps[i - 1].weight):.1f}")
            points.append(f"{x:.1f},{ys(s.weight):.1f}")
        end = xs(min(t1, now).timestamp())
        points.append(f"{end:.1f},{ys(steps[-1].weight):.1f}")
        parts.append(
            f'<polyline class="weight" points="{" ".join(points)}" fill="none" stroke="#2563eb" stroke-width="2"/>'
        )
        for s in steps:
            x, y = xs(s.time.timestamp()), ys(s.weight)
            parts.append(
                f'<g class="weight-step" data-weight="{s.weight}" data-reason="{e(s.reason)}">'
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#2563eb"/>'
                f'<text x="{x + 4:.1f}" y="{max(y - 5, y0 + 10):.1f}">{s.weight}%</text>'
                f"<title>{e(_clock(s.time.timestamp()))}: {s.weight}% ({e(s.reason)})</title></g>"
            )
    # one panel per SLI
    by_sli = {s.sli: s for s in series}
    for index, sli in enumerate(slis, start=1):
        y0 = top + index * (panel + gap)
        parts.append(
            _sli_panel(
                sli, by_sli.get(sli), [c for c in checks if c.sli == sli], xs, y0, panel, left, width - right
            )
        )
    parts.append("</svg>")
    return "".join(parts)


def _panel_frame(
    title: str, y0: float, panel: float, left: float, right: float, ticks: Sequence[float], ys: Scale
) -> str:
    parts = [
        f'<rect x="{left}" y="{y0}" width="{right - left}" height="{panel}" fill="none" stroke="#d1d5db"/>',
        f'<text x="{left + 4}" y="{y0 - 4}" font-weight="600">{e(title)}</text>',
    ]
    for t in ticks:
        y = ys(t)
        if y0 - 0.5 <= y <= y0 + panel + 0.5:
            parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_axis_label(t)}</text>')
    return "".join(parts)


def _sli_panel(
    sli: str,
    data: SLISeries | None,
    checks: Sequence[CheckPoint],
    xs: Scale,
    y0: float,
    panel: float,
    left: float,
    right: float,
) -> str:
    finite = [v for _, v in (data.points if data else []) if math.isfinite(v)]
    finite += [c.value for c in checks if c.value is not None and c.value < 1e300]
    threshold = (
        data.threshold
        if data and data.threshold is not None
        else next((c.threshold for c in reversed(checks) if c.threshold is not None), None)
    )
    if threshold is not None:
        finite.append(threshold)
    hi = max(finite) * 1.15 if finite else 1.0
    ys = Scale(0.0, hi if hi > 0 else 1.0, y0 + panel, y0)
    unit = SLI_UNITS.get(sli, "")
    title = f"{sli}{f' ({unit})' if unit else ''}" + (
        f" — threshold {fmt(threshold)}" if threshold is not None else ""
    )
    parts = [
        f'<g class="sli" data-sli="{e(sli)}">',
        _panel_frame(title, y0, panel, left, right, nice_ticks(0, ys.hi, 4), ys),
    ]
    if threshold is not None:
        y = ys(threshold)
        parts.append(
            f'<line class="threshold" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#dc2626" '
            f'stroke-dasharray="6 4"><title>threshold {fmt(threshold)}</title></line>'
        )
    if data is not None:
        segment: list[str] = []
        segments: list[list[str]] = []
        for ts, value in data.points:
            if not math.isfinite(value) or not xs.lo <= ts <= xs.hi:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{xs(ts):.1f},{ys(min(value, ys.hi)):.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) == 1:  # a lone sample between gaps: a dot (a one-point line draws nothing)
                cx, cy = seg[0].split(",")
                parts.append(f'<circle class="series-point" cx="{cx}" cy="{cy}" r="1.5" fill="#7c3aed"/>')
                continue
            parts.append(
                f'<polyline class="series" points="{" ".join(seg)}" fill="none" stroke="#7c3aed" stroke-width="1.5"/>'
            )
        if not segments:
            parts.append(
                f'<text x="{(left + right) / 2:.0f}" y="{y0 + panel / 2:.0f}" text-anchor="middle" '
                'class="muted">no samples from Prometheus in this range</text>'
            )
    for c in checks:
        x = xs(c.time.timestamp())
        if c.value is None:
            y, fill = y0 + panel - 4, "#9ca3af"
        else:
            y, fill = ys(min(c.value, ys.hi)), ("#16a34a" if c.passed else "#dc2626")
        verdict = "pass" if c.passed else ("no data" if c.value is None else "FAIL")
        title = f"{_clock(c.time.timestamp())} {c.variant or ''}{' (bake)' if c.bake else ''}: {sli} {fmt(c.value)} {verdict}"
        if c.message:
            title += f" — {c.message}"
        parts.append(
            f'<circle class="check {"pass" if c.passed else "fail"}" cx="{x:.1f}" cy="{y:.1f}" r="4" '
            f'fill="{fill}" stroke="#fff"><title>{e(title)}</title></circle>'
        )
    parts.append("</g>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------
# the page of one CompressedModel


def _variants_table(status: Mapping[str, Any]) -> str:
    selected = status.get("selectedVariant")
    rows = []
    for v in [*(status.get("variants") or [])]:
        m = v.get("metrics") or {}
        mark = " ★" if v.get("name") == selected else ""
        rows.append(
            f'<tr class="variant-row" data-variant="{e(v.get("name"))}"><td>{e(v.get("name"))}{mark}</td>'
            f"<td>{phase_badge(v.get('phase'))}</td><td>{e(v.get('technique'))}</td>"
            f'<td class="num">{fmt(m.get("sizeRatio"), ".3f", "x")}</td>'
            f'<td class="num">{fmt(m.get("accuracyDelta"), ".4f")}</td>'
            f'<td class="num">{fmt(m.get("p50Ms"), ".3f")}</td><td class="num">{fmt(m.get("p99Ms"), ".3f")}</td>'
            f'<td class="num">{fmt(m.get("peakMemoryMB"), ".1f")}</td>'
            f"<td>{e(v.get('reason'))}{': ' if v.get('reason') and v.get('message') else ''}{e(v.get('message'))}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "variant",
            "phase",
            "technique",
            "size",
            "Δ accuracy",
            "p50 ms",
            "p99 ms",
            "peak MiB",
            "note",
        )
    )
    if not rows:
        return '<p class="muted">No variants yet.</p>'
    return f'<table id="variants"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def progress_html(progress: CompressionProgress | None) -> str:
    if progress is None:
        return '<p class="muted">No compression run yet.</p>'
    percent = round(100 * progress.fraction)
    parts = [
        f'<p id="progress" data-done="{progress.done}" data-total="{progress.total}">'
        f'<span class="bar"><span style="width:{percent}%"></span></span> {e(progress.summary())}</p>'
    ]
    if progress.jobs:
        rows = "".join(
            f'<tr class="job"><td>{e(j.name)}</td><td>{e(j.variant)}</td><td>{phase_badge(j.state)}</td>'
            f'<td>{e(stamp(j.started))}</td><td class="num">{e(format_seconds(j.seconds))}</td><td>{e(j.message)}</td></tr>'
            for j in progress.jobs
        )
        head = "".join(f"<th>{h}</th>" for h in ("Job", "variant", "state", "started", "time", "message"))
        parts.append(f'<table id="jobs"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
    return "".join(parts)


def _conditions(status: Mapping[str, Any]) -> str:
    conditions = status.get("conditions") or []
    if not conditions:
        return '<p class="muted">No conditions.</p>'
    rows = "".join(
        f"<tr><td>{e(c.get('type'))}</td><td>{e(c.get('status'))}</td><td>{e(c.get('reason'))}</td>"
        f"<td>{e(c.get('message'))}</td><td>{e(stamp(c.get('lastTransitionTime')))}</td></tr>"
        for c in conditions
    )
    head = "".join(f"<th>{h}</th>" for h in ("type", "status", "reason", "message", "since"))
    return f'<table id="conditions"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _events(events: Sequence[Mapping[str, Any]]) -> str:
    if not events:
        return '<p class="muted">No Events.</p>'
    rows = []
    for ev in reversed(events):  # newest first
        when = event_time(ev)
        count = ev.get("count")
        rows.append(
            f'<tr class="event" data-reason="{e(ev.get("reason"))}"><td>{e(stamp(when))}</td>'
            f"<td>{e(ev.get('type'))}</td><td>{e(ev.get('reason'))}</td><td>{e(ev.get('message'))}</td>"
            f'<td class="num">{e(count if count and count > 1 else "")}</td></tr>'
        )
    head = "".join(f"<th>{h}</th>" for h in ("time", "type", "reason", "message", "count"))
    return f'<table id="events"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def timeline_html(view: ModelView) -> str:
    obj = view.obj
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    steps = weight_steps(spec, view.events)
    marks = decisions(view.events)
    checks = check_points(status)
    span = time_range(steps, marks, checks, view.now)
    if span is None:
        return '<p class="muted" id="timeline-empty">No canary yet.</p>'
    svg = timeline_svg(steps, marks, checks, view.series, span[0], span[1], view.now)
    items = "".join(
        f'<li class="{"Warning" if d.warning else "Normal"}" data-reason="{e(d.reason)}">'
        f"{e(d.time.strftime('%H:%M:%S'))} <b>{e(d.reason)}</b>: {e(d.message)}</li>"
        for d in marks
    )
    legend = (
        '<p class="muted">Blue: the canary weight from the decision Events. Purple: each SLI of the canary '
        "from Prometheus (the operator's PromQL, query_range); red dashes: its threshold; dots: the "
        "operator's checks (green pass, red fail, grey no data). Numbered lines: decisions, listed below.</p>"
    )
    return f'{svg}{legend}<ol class="decisions" id="decisions">{items}</ol>'


def model_page(view: ModelView, *, refresh: int | None) -> str:
    obj = view.obj
    meta, status, spec = obj.get("metadata") or {}, obj.get("status") or {}, obj.get("spec") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    variant, weight = serving_variant(obj)
    canary = status.get("canary") or {}
    budget = (spec.get("selection") or {}).get("maxAccuracyDelta", 0.01)
    summary = [
        f"<h1>{e(namespace)}/{e(name)} {phase_badge(status.get('phase'))}</h1>",
        f'<p id="message">{e(status.get("message"))}</p>',
        f'<p>serving <b id="serving-variant">{e(variant)}</b>'
        f"{'' if weight is None else f' at <b>{weight}%</b>'}",
    ]
    if canary.get("variant") and status.get("phase") in ("Canary", "WaitingForApproval"):
        steps = (spec.get("rollout") or {}).get("steps") or []
        summary.append(
            f"; canary step {int(canary.get('step') or 0) + 1}/{len(steps) or '?'}, "
            f"requested {e(canary.get('requestedWeight'))}%, failed checks {e(canary.get('failedChecks'))}"
        )
    summary.append("</p>")
    if status.get("paused"):
        summary.append('<div class="banner info">Paused (kubectl kondense resume to go on).</div>')
    if status.get("phase") == "WaitingForApproval":
        summary.append(
            f'<div class="banner info">Waiting for approval: kubectl kondense approve {e(name)}</div>'
        )
    body = "".join(summary) + (
        f"<h2>Compression</h2>{progress_html(view.progress)}"
        f"<h2>Variants</h2>{_variants_table(status)}"
        f"<h2>Size, accuracy and latency</h2>{pareto_svg(status, budget if isinstance(budget, int | float) else None)}"
        f"<h2>Canary timeline</h2>{timeline_html(view)}"
        f"<h2>Conditions</h2>{_conditions(status)}"
        f"<h2>Events</h2>{_events(view.events)}"
    )
    return page(
        f"{namespace}/{name}", body, refresh=refresh, problems=view.problems, where=f"{namespace}/{name}"
    )


def error_page(status: int, message: str, *, refresh: int | None = None) -> str:
    return page(f"{status}", f"<h1>{status}</h1>", refresh=refresh, problems=[message])
