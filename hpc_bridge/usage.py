"""`hpc-bridge usage`: core-hours and cost per nodearray and VM size, as a table, CSV or SVG chart.

Everything here is pure over the parsed GET usage answer (hpc_bridge.api.models.ClusterUsage):
`usage_records()` flattens it to one record per interval x nodearray x VM size, `summarize()`
adds them up for the table, `to_csv()` writes them, and `chart()` lays out a stacked bar chart
(geometry computed here) that templates/usage.svg.j2 draws. No plotting dependency.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from hpc_bridge.api.models import ClusterUsage
from hpc_bridge.errors import UsageError

TIMEFRAMES = ("monthToDate", "lastMonth", "weekToDate", "custom")
GRANULARITIES = ("total", "daily", "hourly")
METRICS = ("cost", "hours")
CSV_FIELDS = ["start", "end", "nodearray", "vmSize", "coreHours", "cost"]  # as in --json; cost in USD

# Distinguishable on white, and for the common kinds of colour blindness (Okabe-Ito + extras).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000",
           "#7F7F7F", "#8C564B", "#17BECF", "#BCBD22"]


@dataclass(frozen=True)
class UsageRecord:
    start: str
    end: str
    nodearray: str
    vm_size: str  # "-" when the API gave no per-size details
    hours: float  # core-hours
    cost: float | None  # USD; None when the API gave no cost

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "nodearray": self.nodearray, "vmSize": self.vm_size,
                "coreHours": round(self.hours, 6), "cost": None if self.cost is None else round(self.cost, 6)}


def usage_records(usage: ClusterUsage) -> list[UsageRecord]:
    """One record per interval, nodearray (or head node) and VM size, in the API's order."""
    out: list[UsageRecord] = []
    for interval in usage.usage:
        for item in interval.breakdown:
            name = item.node or item.category
            if item.details:
                for d in item.details:
                    out.append(UsageRecord(interval.start, interval.end, name, d.vm_size or "-",
                                           float(d.hours or 0.0), d.cost))
            elif item.hours or item.cost:  # a nodearray that was not used: no row
                out.append(UsageRecord(interval.start, interval.end, name, "-", float(item.hours or 0.0), item.cost))
    return out


def _sum_cost(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def summarize(records: Sequence[UsageRecord]) -> list[dict[str, Any]]:
    """Totals per (nodearray, VM size) over all intervals, sorted, biggest cost/hours first
    within a nodearray; zero rows dropped."""
    acc: dict[tuple[str, str], list[UsageRecord]] = {}
    for r in records:
        acc.setdefault((r.nodearray, r.vm_size), []).append(r)
    rows = []
    for (array, size), recs in acc.items():
        hours = sum(r.hours for r in recs)
        cost = _sum_cost(r.cost for r in recs)
        if hours == 0 and not cost:
            continue
        rows.append({"nodearray": array, "vmSize": size, "coreHours": round(hours, 3),
                     "cost": None if cost is None else round(cost, 2)})
    rows.sort(key=lambda r: (r["nodearray"], -(r["cost"] or 0.0), -r["coreHours"], r["vmSize"]))
    return rows


def totals(records: Sequence[UsageRecord]) -> dict[str, Any]:
    cost = _sum_cost(r.cost for r in records)
    return {"coreHours": round(sum(r.hours for r in records), 3), "cost": None if cost is None else round(cost, 2)}


def table_rows(summary: Sequence[dict[str, Any]], total: dict[str, Any]) -> list[list[Any]]:
    rows = [[r["nodearray"], r["vmSize"], f"{r['coreHours']:.1f}", _money(r["cost"])] for r in summary]
    rows.append(["TOTAL", "", f"{total['coreHours']:.1f}", _money(total["cost"])])
    return rows


def _money(value: float | None) -> str | None:
    return None if value is None else f"${value:,.2f}"


def to_csv(records: Sequence[UsageRecord]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in records:
        w.writerow([r.start, r.end, r.nodearray, r.vm_size, f"{r.hours:.6f}",
                    "" if r.cost is None else f"{r.cost:.6f}"])
    return buf.getvalue()


def check_options(timeframe: str | None, from_: str | None, to: str | None, granularity: str | None) -> str | None:
    """Validate the command-line combination; returns the timeframe to send."""
    if (from_ or to) and timeframe not in (None, "custom"):
        raise UsageError(f"--from/--to need --timeframe custom (got --timeframe {timeframe})")
    if from_ or to:
        if not (from_ and to):
            raise UsageError("--from and --to go together")
        timeframe = "custom"
    if timeframe == "custom" and not (from_ and to):
        raise UsageError("--timeframe custom needs --from and --to (ISO-8601, e.g. 2024-05-01)")
    from datetime import datetime

    for opt, value in (("--from", from_), ("--to", to)):
        if value:
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise UsageError(f"{opt} {value!r} is not an ISO-8601 date or time (e.g. 2024-05-01T00:00)") from None
    return timeframe


# --------------------------------------------------------------------------- chart


def nice_step(top: float, ticks: int = 5) -> float:
    """A 1/2/2.5/5 x 10^k step giving about `ticks` intervals up to `top`."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag  # pragma: no cover


def interval_label(start: str, end: str, granularity: str | None) -> str:
    s = start.replace("T", " ").rstrip("Z")
    if granularity == "hourly":
        return s[5:13] + "h"  # "05-03 14h"
    if granularity == "total":
        return f"{start[:10]} .. {end[:10]}"
    return s[:10]


@dataclass
class Segment:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass
class Chart:
    width: int
    height: int
    title: str
    subtitle: str
    unit: str
    plot_left: float
    plot_top: float
    plot_width: float
    plot_height: float
    ticks: list[tuple[float, str]] = field(default_factory=list)  # (y, label)
    labels: list[tuple[float, float, str]] = field(default_factory=list)  # (x, y, label)
    segments: list[Segment] = field(default_factory=list)
    legend: list[tuple[float, str, str]] = field(default_factory=list)  # (y, color, text)
    legend_x: float = 0.0
    rotate_labels: bool = False
    empty: bool = False


def _fmt_value(value: float, metric: str) -> str:
    return f"${value:,.2f}" if metric == "cost" else f"{value:,.1f} core-hours"


def _tick_label(value: float, metric: str) -> str:
    text = f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:g}"
    return f"${text}" if metric == "cost" else text


def chart(records: Sequence[UsageRecord], metric: str = "cost", granularity: str | None = "daily",
          title: str = "") -> Chart:
    """Lay out a stacked bar chart: one bar per interval, one colour per nodearray/VM size."""
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}")
    if metric == "cost" and records and all(r.cost is None for r in records):
        raise UsageError("the cluster API returned no cost data for this period; use --metric hours")
    intervals: list[tuple[str, str]] = list(dict.fromkeys((r.start, r.end) for r in records))
    value = (lambda r: r.cost or 0.0) if metric == "cost" else (lambda r: r.hours)
    series_total: dict[str, float] = {}
    for r in records:
        key = f"{r.nodearray} / {r.vm_size}" if r.vm_size != "-" else r.nodearray
        series_total[key] = series_total.get(key, 0.0) + value(r)
    series = [k for k in sorted(series_total) if series_total[k] > 0]
    colors = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(series)}
    stacks: dict[tuple[str, str], dict[str, float]] = {iv: {} for iv in intervals}
    for r in records:
        key = f"{r.nodearray} / {r.vm_size}" if r.vm_size != "-" else r.nodearray
        if key in colors:
            stacks[(r.start, r.end)][key] = stacks[(r.start, r.end)].get(key, 0.0) + value(r)
    top = max((sum(s.values()) for s in stacks.values()), default=0.0)
    step = nice_step(top)
    axis_max = step * max(1, math.ceil(top / step - 1e-9)) if top > 0 else step * 5

    n = max(1, len(intervals))
    labels = [interval_label(a, b, granularity) for a, b in intervals]
    legend_texts = [f"{key} ({_fmt_value(series_total[key], metric)})" for key in series]
    legend_width = 40 + 7 * max((len(t) for t in legend_texts), default=10)
    slot = min(60.0, max(3.0, 900.0 / n))
    every = max(1, math.ceil(n / 24))
    label_px = 7 * max((len(t) for t in labels), default=0)
    rotate = label_px + 6 > slot * every
    left, top_margin = 80.0, 64.0
    bottom = 30.0 + (0.72 * label_px if rotate else 20.0)
    plot_w, plot_h = slot * n, 300.0
    width = int(left + plot_w + 30 + legend_width)
    height = int(max(top_margin + plot_h + bottom, top_margin + 22 * len(series) + 20))
    unit = "USD" if metric == "cost" else "core-hours"
    total_value = sum(series_total.values())
    period = f"{intervals[0][0][:10]} .. {intervals[-1][1][:10]}" if intervals else "no intervals"
    c = Chart(width=width, height=height,
              title=title or f"{'Cost' if metric == 'cost' else 'Core-hours'} per nodearray and VM size",
              subtitle=f"{period} (UTC), total {_fmt_value(total_value, metric)}",
              unit=unit, plot_left=left, plot_top=top_margin, plot_width=plot_w, plot_height=plot_h,
              rotate_labels=rotate, empty=not series, legend_x=left + plot_w + 30)
    scale = plot_h / axis_max
    k = 0
    while k * step <= axis_max + 1e-9:
        v = k * step
        c.ticks.append((top_margin + plot_h - v * scale, _tick_label(v, metric)))
        k += 1
    bar_w = slot * 0.7
    for i, iv in enumerate(intervals):
        x = left + i * slot + (slot - bar_w) / 2
        if i % every == 0:
            c.labels.append((x + bar_w / 2, top_margin + plot_h + 16, labels[i]))
        y = top_margin + plot_h
        for key in series:  # same stacking order in every bar
            v = stacks[iv].get(key, 0.0)
            if v <= 0:
                continue
            h = v * scale
            y -= h
            c.segments.append(Segment(round(x, 2), round(y, 2), round(bar_w, 2), round(h, 2), colors[key],
                                      f"{labels[i]} {key}: {_fmt_value(v, metric)}"))
    for j, key in enumerate(reversed(series)):  # top of the stack first, like the bars
        c.legend.append((top_margin + 22 * j, colors[key], legend_texts[series.index(key)]))
    return c


def render_svg(c: Chart) -> str:
    from hpc_bridge.templating import template_environment

    return template_environment().get_template("usage.svg.j2").render(chart=c)


@dataclass
class UsageView:
    """One GET usage answer, ready for the table, CSV, JSON or chart."""

    cluster: str
    timeframe: str
    granularity: str
    records: list[UsageRecord]
    intervals: list[tuple[str, str]]  # (start, end) of each interval, in order

    @property
    def summary(self) -> list[dict[str, Any]]:
        return summarize(self.records)

    @property
    def total(self) -> dict[str, Any]:
        return totals(self.records)

    def to_json(self) -> dict[str, Any]:
        return {"timeframe": self.timeframe, "granularity": self.granularity, "summary": self.summary,
                "total": self.total, "intervals": [r.to_json() for r in self.records]}


def gather(cfg, client, *, timeframe: str | None, from_: str | None, to: str | None,
           granularity: str | None) -> UsageView:
    """One GET usage (options checked first by check_options)."""
    usage = client.get_usage(timeframe=timeframe, from_=from_, to=to, granularity=granularity)
    records = usage_records(usage)
    intervals = list(dict.fromkeys((r.start, r.end) for r in records)) or [(u.start, u.end) for u in usage.usage]
    return UsageView(cluster=cfg.cluster.name, timeframe=timeframe or "monthToDate",
                     granularity=granularity or "daily", records=records, intervals=intervals)


def write_chart(path: str, view: UsageView, metric: str) -> None:
    """The stacked bar chart of `metric` over the view's intervals, as an SVG file."""
    svg = render_svg(chart(view.records, metric, view.granularity,
                           title=f"{view.cluster}: {'cost' if metric == 'cost' else 'core-hours'} "
                                 "per nodearray and VM size"))
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(svg)
    except OSError as err:
        raise UsageError(f"--svg {path}: {err.strerror}") from None
