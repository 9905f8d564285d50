"""Evaluation reports a person reads: self-contained HTML or Markdown, plots drawn as inline SVG.

Nothing is fetched: no scripts, fonts, stylesheets or images from elsewhere; the HTML opens from a
USB stick in a hospital without internet access. The plots (ROC curves with the AUROC in the
legend, reliability diagrams, confusion matrices as shaded tables) are drawn here from the report's
own numbers (:meth:`EvalReport.to_dict`), so the report and its JSON cannot disagree.
Markdown embeds the same SVGs as ``data:`` images.
"""
from __future__ import annotations

import base64
import html
from typing import Any, Iterable, Sequence

__all__ = ["render_html", "render_markdown", "roc_svg", "reliability_svg", "summary_rows", "verdict_counts", "verdict_confusion",
           "PROBABILITY_COLUMNS", "CONFORMAL_COLUMNS", "probability_rows", "conformal_rows", "apparent_note"]

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}code{font-size:.85em}
.cards{display:flex;flex-wrap:wrap;gap:1rem}.card{border:1px solid #ddd;border-radius:6px;padding:.5rem}
.card h3{font-size:1rem;margin:.2rem 0}.muted{color:#666;font-size:.85rem}.warn{color:#a33}
svg text{font-family:inherit}
"""


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


# -- SVG ---------------------------------------------------------------------------------------


class _Plot:
    """A unit-square plot area with axes, ticks and labels; ``xy`` maps data to pixels."""

    def __init__(self, width: int, height: int, xlabel: str, ylabel: str, *, xmlns: bool = False, below: int = 0):
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = 44, 10, 10, 36
        self.parts: list[str] = []
        ns = ' xmlns="http://www.w3.org/2000/svg"' if xmlns else ""
        total = height + below  # room under the plot, for a legend
        self.head = f'<svg{ns} width="{width}" height="{total}" viewBox="0 0 {width} {total}" role="img" font-size="11">'
        pw, ph = self.pw, self.ph
        self.parts.append(f'<rect x="{self.left}" y="{self.top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>')
        for t in (0, 0.25, 0.5, 0.75, 1.0):
            x, y = self.xy(t, t)
            self.parts.append(f'<line x1="{x:.1f}" y1="{self.top + ph}" x2="{x:.1f}" y2="{self.top + ph + 4}" stroke="#999"/>')
            self.parts.append(f'<text x="{x:.1f}" y="{self.top + ph + 15}" text-anchor="middle">{t:g}</text>')
            self.parts.append(f'<line x1="{self.left - 4}" y1="{y:.1f}" x2="{self.left}" y2="{y:.1f}" stroke="#999"/>')
            self.parts.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
            if 0 < t < 1:
                self.parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.left + pw}" y2="{y:.1f}" stroke="#eee"/>')
        self.parts.append(f'<text x="{self.left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">{html.escape(xlabel)}</text>')
        cy = self.top + ph / 2
        self.parts.append(f'<text x="12" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 12 {cy:.1f})">{html.escape(ylabel)}</text>')
        x0, y0 = self.xy(0, 0)
        x1, y1 = self.xy(1, 1)
        self.parts.append(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#bbb" stroke-dasharray="4 3"/>')

    @property
    def pw(self) -> float:
        return self.w - self.left - self.right

    @property
    def ph(self) -> float:
        return self.h - self.top - self.bottom

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return self.left + x * self.pw, self.top + (1 - y) * self.ph

    def polyline(self, xs: Sequence[float], ys: Sequence[float], color: str, width: float = 1.8) -> None:
        points = " ".join("{:.1f},{:.1f}".format(*self.xy(x, y)) for x, y in zip(xs, ys))
        self.parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="{width}"/>')

    def svg(self, extra: Iterable[str] = ()) -> str:
        return self.head + "".join(self.parts) + "".join(extra) + "</svg>"


def roc_svg(curves: Sequence[tuple[str, Sequence[float], Sequence[float], float | None]], *, size: int = 300, xmlns: bool = False) -> str:
    """ROC curves ``(name, fpr, tpr, auroc)``; the legend names each with its AUROC."""
    legend_h = 15 * len(curves) + 6
    plot = _Plot(size, size, "1 − specificity (false positive rate)", "sensitivity", xmlns=xmlns, below=legend_h)
    extra = []
    for i, (name, fpr, tpr, auc) in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        plot.polyline(fpr, tpr, color)
        y = size + 12 + 15 * i
        extra.append(f'<line x1="8" y1="{y - 4}" x2="26" y2="{y - 4}" stroke="{color}" stroke-width="2.5"/>')
        extra.append(f'<text x="32" y="{y}">{html.escape(name)} (AUROC {_f(auc)})</text>')
    return plot.svg(extra)


def reliability_svg(block: dict[str, Any], *, size: int = 240, xmlns: bool = False) -> str:
    """Fraction positive against mean score per bin; the grey bars show how many rows each bin has."""
    rel = block["reliability"]
    plot = _Plot(size, size, "mean score", "fraction positive", xmlns=xmlns)
    counts = rel["count"]
    top = max(counts) if counts and max(counts) > 0 else 1
    edges = rel["edges"]
    for i, c in enumerate(counts):
        if not c:
            continue
        x0, _ = plot.xy(edges[i], 0)
        x1, _ = plot.xy(edges[i + 1], 0)
        height = 0.25 * plot.ph * c / top
        plot.parts.append(
            f'<rect x="{x0 + 1:.1f}" y="{plot.top + plot.ph - height:.1f}" width="{x1 - x0 - 2:.1f}" height="{height:.1f}" fill="#ddd"><title>{c} rows</title></rect>'
        )
    pts = [(m, f) for m, f, c in zip(rel["mean_score"], rel["fraction_positive"], counts) if c and m is not None and f is not None]
    if pts:
        plot.polyline([p[0] for p in pts], [p[1] for p in pts], PALETTE[0])
        for m, f in pts:
            x, y = plot.xy(m, f)
            plot.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{PALETTE[0]}"/>')
    return plot.svg()


def _confusion_html(labels: Sequence[str], matrix: Sequence[Sequence[int]], rows: str, columns: str,
                    abstained: Sequence[int] | None = None, abstained_as: str = "", uncertain: Sequence[int] | None = None) -> str:
    """A shaded confusion table; ``abstained`` adds a grey column (medzero's ``not_applicable`` per row),
    ``uncertain`` another (its ``uncertain`` verdicts: in scope, a conformal rule not sure)."""
    top = max((v for row in matrix for v in row), default=0) or 1
    extra = f'<th style="background:#eee">{html.escape(abstained_as)}</th>' if abstained is not None else ""
    extra += '<th style="background:#fff3d6">uncertain</th>' if uncertain is not None else ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in labels) + extra
    out = [f'<table><tr><th class="l">{html.escape(rows)} ↓ / {html.escape(columns)} →</th>{head}</tr>']
    for i, (name, row) in enumerate(zip(labels, matrix)):
        cells = []
        for j, v in enumerate(row):
            alpha = 0.85 * v / top
            color = "#fff" if alpha > 0.5 else "#222"
            diag = "font-weight:bold;" if labels[j] == name else ""
            cells.append(f'<td style="background:rgba(31,119,180,{alpha:.2f});color:{color};{diag}">{v}</td>')
        if abstained is not None:
            cells.append(f'<td style="background:#eee">{abstained[i]}</td>')
        if uncertain is not None:
            cells.append(f'<td style="background:#fff3d6">{uncertain[i]}</td>')
        out.append(f'<tr><th class="l">{html.escape(name)}</th>{"".join(cells)}</tr>')
    out.append("</table>")
    return "".join(out)


def _confusion_md(labels: Sequence[str], matrix: Sequence[Sequence[int]], rows: str, columns: str,
                  abstained: Sequence[int] | None = None, abstained_as: str = "", uncertain: Sequence[int] | None = None) -> str:
    extra = ([abstained_as] if abstained is not None else []) + (["uncertain"] if uncertain is not None else [])
    lines = [f"| {rows} ↓ / {columns} → | " + " | ".join([*labels, *extra]) + " |", "|---" * (len(labels) + len(extra) + 1) + "|"]
    for i, (name, row) in enumerate(zip(labels, matrix)):
        cells = [f"**{v}**" if labels[j] == name else str(v) for j, v in enumerate(row)]
        cells += [str(abstained[i])] if abstained is not None else []
        cells += [str(uncertain[i])] if uncertain is not None else []
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_counts(v: dict[str, Any]) -> str:
    """``11 judged, 2 not_applicable (15.4% abstained)``: of the ``n`` rows with a human verdict,
    how many the agreement is over and how many medzero abstained on."""
    judged, abstained, rate = v.get("n_judged", v["n"]), v.get("n_abstained", 0), v.get("abstention_rate")
    unsure = (f"; {v['n_uncertain']} uncertain ({v['uncertain_rate'] * 100:.1f}%: in scope, not sure, unlike "
              f"{v.get('abstained_as', 'not_applicable')}: out of scope)"
              if v.get("n_uncertain") else "")
    return (f"{judged} judged, {abstained} {v.get('abstained_as', 'not_applicable')}"
            f" ({'–' if rate is None else f'{rate * 100:.1f}%'} abstained){unsure}")


def verdict_confusion(v: dict[str, Any]) -> tuple[list[str], list[list[int]]]:
    """The verdict confusion matrix's columns and rows as printed: medzero's verdicts, then its abstentions."""
    labels, matrix = list(v["labels"]), [list(row) for row in v["confusion"]["matrix"]]
    abstained = v["confusion"].get("abstained")
    if abstained is not None:
        labels, matrix = [*labels, v.get("abstained_as", "not_applicable")], [[*row, a] for row, a in zip(matrix, abstained)]
    unsure = v["confusion"].get("uncertain")
    if unsure is not None:
        labels, matrix = [*labels, "uncertain"], [[*row, a] for row, a in zip(matrix, unsure)]
    return labels, matrix


# -- tables ------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ["label", "n+/n−", "prevalence", "AUROC [95% CI]", "AUPRC", "threshold", "sensitivity", "specificity", "PPV", "Brier", "ECE"]


def summary_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row of plain strings per label, the columns of :data:`SUMMARY_COLUMNS`."""
    rows = []
    for lid, b in data["labels"].items():
        ci = b.get("auroc_ci") or {}
        auroc = _f(b["auroc"]) + (f" [{_f(ci.get('low'))}, {_f(ci.get('high'))}]" if b["auroc"] is not None else "")
        t = b["at_threshold"]
        rows.append([
            lid, f"{b['n_pos']}/{b['n_neg']}", _f(b["prevalence"]), auroc, _f(b["auprc"]), _f(t["threshold"]),
            _f(t["sensitivity"]), _f(t["specificity"]), _f(t["ppv"]), _f(b["brier"]), _f(b["ece"]),
        ])
    return rows


PROBABILITY_COLUMNS = ["label", "map", "n", "ECE raw", "ECE calibrated", "Brier raw", "Brier calibrated", "log-loss raw", "log-loss calibrated"]
CONFORMAL_COLUMNS = ["label", "alpha", "qhat", "n", "coverage", "95% interval", "target", "met", "uncertain rate", "decided wrong"]


def probability_rows(data: dict[str, Any]) -> list[list[str]]:
    """Per label with an overlay probability map: ECE / Brier / log-loss of the raw scores and of the probabilities."""
    rows = []
    for lid, b in data["labels"].items():
        p = b.get("probability")
        if p:
            rows.append([lid, p["method"], str(p["n"]), _f(p["before"]["ece"]), _f(p["after"]["ece"]), _f(p["before"]["brier"]),
                         _f(p["after"]["brier"]), _f(p["before"]["log_loss"]), _f(p["after"]["log_loss"])])
    return rows


def apparent_note(data: dict[str, Any]) -> str:
    """A warning when the calibrated figures come from the rows the overlay was fitted on, else ``""``."""
    fitted_on = any((b.get(k) or {}).get("rows", "").startswith("the overlay's own") for b in data["labels"].values()
                    for k in ("probability", "conformal"))
    return ("These are the rows the overlay was fitted on: the calibrated figures and the coverage are apparent (optimistic); "
            "evaluate on held-out rows, or read the cross-validated figures the overlay records.") if fitted_on else ""


def conformal_rows(data: dict[str, Any]) -> list[list[str]]:
    """Per label with an overlay conformal rule: empirical coverage, its interval, and whether it meets 1 − alpha."""
    rows = []
    for lid, b in data["labels"].items():
        c = b.get("conformal")
        if c:
            low, high = c["interval"]
            rows.append([lid, f"{c['alpha']:g}", _f(c["qhat"]), str(c["n"]), _f(c["coverage"]),
                         "–" if low is None else f"[{low:.3f}, {high:.3f}]", _f(c["target"]),
                         "met" if c["met"] else "NOT MET", _f(c["uncertain_rate"]), str(c["decided_wrong"])])
    return rows


_PROBABILITY_NOTE = ("Raw: the model's scores; calibrated: the overlay's probabilities, on these rows (optimistic if they are the rows "
                     "it was fitted on; the overlay records cross-validated figures). ECE over 10 equal-width bins.")
_CONFORMAL_NOTE = ("Coverage: the share of rows whose true value is in the conformal set (split conformal on the raw score); the "
                   "interval is the 95% Wilson score interval; met when it reaches the target 1 − alpha. Uncertain: the set held "
                   "both values (or none), so the label was not decided; that is \"in scope, not sure\", unlike not_applicable "
                   "(\"input out of scope\").")


def _repro_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    r = data["reproducibility"]
    cal = data.get("calibration") or {}
    return [
        ("medzero", r.get("medzero_version", "")),
        ("models", ", ".join(r.get("models", [])) or "–"),
        ("task", f"{r['task']['name']} ({r['task']['source']}), sha256 {r['task']['sha256']} of {r['task']['sha256_of']}"),
        ("thresholds", cal.get("summary") or cal.get("status", "")),
        *([("metric limits", _metric_limits(cal["metrics"]))] if cal.get("metrics") else []),
        ("manifest", f"{r['manifest']['path']} ({r['manifest']['rows']} rows), sha256 {r['manifest']['sha256']}"),
        ("data sha256", f"{r['data_sha256']} over {r['data_hash_of']}"),
        ("bootstrap", f"{r['n_boot']} resamples, seed {r['seed']}"),
        ("created", r.get("created", "")),
    ]


def _metric_limits(metrics: dict[str, Any]) -> str:
    """``snr_db min 13.7 (was 10)``, one per fitted side: the limits the verdicts were judged with."""
    return "; ".join(f"{m} {side} {c['limit']:.6g}" + ("" if c.get("previous_limit") is None else f" (was {c['previous_limit']:g})")
                     for m, sides in metrics.items() for side, c in sides.items())


def _roc_curves(data: dict[str, Any]) -> list[tuple[str, list, list, float | None]]:
    return [(lid, b["roc"]["fpr"], b["roc"]["tpr"], b["auroc"]) for lid, b in data["labels"].items() if b.get("roc")]


# -- HTML --------------------------------------------------------------------------------------


def render_html(data: dict[str, Any]) -> str:
    """The report as one HTML file with inline CSS and SVG (no scripts, nothing fetched)."""
    e = html.escape
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>medzero evaluation: {e(data['task'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Evaluation of <code>{e(data['task'])}</code> ({e(data['mode'])})</h1>",
        f'<p>{data["rows"].get("scored", 0)} of {data["rows"].get("manifest", 0)} rows scored'
        + (f', <span class="warn">{data["rows"]["failed"]} failed (listed below)</span>' if data["rows"].get("failed") else "")
        + f'. AUROC intervals: {data["settings"]["ci_method"]}, {data["settings"]["n_boot"]} resamples. '
        + f'A score at or above the threshold is positive. ECE over {data["settings"]["calibration_bins"]} equal-width bins.</p>',
    ]
    cal = data.get("calibration") or {}
    if cal.get("status") != "calibrated":
        out.append(f'<p class="warn">{e(_sentence(cal.get("status", "uncalibrated")))}</p>')
    out.append("<h2>Per label</h2><table><tr>" + "".join(f"<th{' class=l' if i == 0 else ''}>{e(c)}</th>" for i, c in enumerate(SUMMARY_COLUMNS)) + "</tr>")
    for row in summary_rows(data):
        out.append("<tr>" + "".join(f'<td{" class=l" if i == 0 else ""}>{e(v)}</td>' for i, v in enumerate(row)) + "</tr>")
    out.append("</table>")
    curves = _roc_curves(data)
    if curves:
        out.append("<h2>ROC curves</h2>" + roc_svg(curves, size=360))
    out.append('<h2>Per label: ROC and reliability</h2><div class="cards">')
    for i, (lid, b) in enumerate(data["labels"].items()):
        card = [f'<div class="card"><h3>{e(lid)}</h3><div class="muted">{e(b["name"])} · polarity {e(b["polarity"])} · '
                f'threshold {_f(b["at_threshold"]["threshold"])} ({e(b.get("threshold_source", "task file"))})</div>']
        if b.get("roc"):
            card.append(roc_svg([(lid, b["roc"]["fpr"], b["roc"]["tpr"], b["auroc"])], size=240))
        else:
            card.append(f'<p class="muted">{e(b.get("note", "no ROC curve"))}</p>')
        card.append(reliability_svg(b) + "</div>")
        out.append("".join(card))
    out.append("</div>")
    out += _calibration_html(data)
    mc = data.get("multiclass")
    if mc and mc.get("confusion"):
        out.append(
            f"<h2>Multiclass ({mc['n']} rows with a known class)</h2><table>"
            f"<tr><th class=l>top-1 accuracy</th><td>{_f(mc['top_1'])}</td></tr>"
            f"<tr><th class=l>top-5 accuracy</th><td>{_f(mc['top_5'])}{(' (' + e(mc['top_5_note']) + ')') if mc.get('top_5_note') else ''}</td></tr>"
            f"<tr><th class=l>balanced accuracy</th><td>{_f(mc['balanced_accuracy'])}</td></tr>"
            f"<tr><th class=l>macro-F1</th><td>{_f(mc['macro_f1'])}</td></tr></table>"
            + _confusion_html(mc["confusion"]["labels"], mc["confusion"]["matrix"], "true", "predicted")
        )
    v = data.get("verdicts")
    if v:
        rate = v.get("abstention_rate")
        out.append(
            f"<h2>Verdicts: human against medzero ({v['n']} rows)</h2><p>Of {v['n']} rows with a human verdict: {e(verdict_counts(v))}. "
            f"Agreement and kappa are over the {v.get('n_judged', v['n'])} judged rows; "
            f"{e(v.get('abstained_as', 'not_applicable'))} is medzero declining to judge an input, not a triage level.</p><table>"
            f"<tr><th class=l>abstention rate</th><td>{_f(rate)}</td></tr>"
            f"<tr><th class=l>agreement</th><td>{_f(v['agreement'])}</td></tr>"
            f"<tr><th class=l>Cohen's kappa</th><td>{_f(v['kappa'])}</td></tr>"
            f"<tr><th class=l>linearly weighted kappa</th><td>{_f(v['kappa_linear'])}</td></tr></table>"
            + _confusion_html(v["labels"], v["confusion"]["matrix"], "human", "medzero",
                              v["confusion"].get("abstained"), v.get("abstained_as", "not_applicable"), v["confusion"].get("uncertain"))
        )
    if data.get("errors"):
        out.append('<h2 class="warn">Rows that could not be classified</h2><table><tr><th>line</th><th class=l>path</th><th class=l>error</th></tr>')
        for err in data["errors"]:
            out.append(f'<tr><td>{err["line"]}</td><td class=l>{e(err["path"])}</td><td class=l>{e(err["error"])}</td></tr>')
        out.append("</table>")
    out.append("<h2>Reproducibility</h2><table>")
    for key, value in _repro_rows(data):
        out.append(f"<tr><th class=l>{e(key)}</th><td class=l><code>{e(str(value))}</code></td></tr>")
    out.append("</table></body></html>\n")
    return "\n".join(out)


def _calibration_html(data: dict[str, Any]) -> list[str]:
    """The calibrated-probability and conformal sections (empty without an overlay of format 2)."""
    e = html.escape
    out = []

    def table(columns, rows, flag=None):
        head = "".join(f"<th{' class=l' if i == 0 else ''}>{e(c)}</th>" for i, c in enumerate(columns))
        body = "".join("<tr>" + "".join(f'<td{" class=l" if i == 0 else ""}{" class=warn" if flag is not None and i == flag and v != "met" else ""}>{e(v)}</td>'
                                        for i, v in enumerate(r)) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    prob = probability_rows(data)
    if (prob or conformal_rows(data)) and apparent_note(data):
        out.append(f'<p class="warn">{e(apparent_note(data))}</p>')
    if prob:
        out.append(f"<h2>Calibrated probabilities</h2><p>{e(_PROBABILITY_NOTE)}</p>" + table(PROBABILITY_COLUMNS, prob))
        out.append('<div class="cards">')
        for lid, b in data["labels"].items():
            if b.get("probability"):
                out.append(f'<div class="card"><h3>{e(lid)}: calibrated</h3>{reliability_svg(b["probability"])}</div>')
        out.append("</div>")
    conf = conformal_rows(data)
    if conf:
        out.append(f"<h2>Conformal abstention</h2><p>{e(_CONFORMAL_NOTE)}</p>" + table(CONFORMAL_COLUMNS, conf, flag=7))
    return out


# -- Markdown ----------------------------------------------------------------------------------


def _img(svg: str, alt: str) -> str:
    return f"![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.encode('utf-8')).decode('ascii')})"


def render_markdown(data: dict[str, Any]) -> str:
    """The report as Markdown; plots are SVG ``data:`` images (shown by most viewers, not by GitHub)."""
    out = [f"# Evaluation of `{data['task']}` ({data['mode']})", ""]
    rows = data["rows"]
    out.append(
        f"{rows.get('scored', 0)} of {rows.get('manifest', 0)} rows scored"
        + (f", **{rows['failed']} failed** (listed below)" if rows.get("failed") else "")
        + f". AUROC intervals: {data['settings']['ci_method']}, {data['settings']['n_boot']} resamples. "
        "A score at or above the threshold is positive."
    )
    cal = data.get("calibration") or {}
    if cal.get("status") != "calibrated":
        out += ["", f"**{_sentence(cal.get('status', 'uncalibrated'))}**"]
    out += ["", "## Per label", "", "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|---" * len(SUMMARY_COLUMNS) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in summary_rows(data)]
    curves = _roc_curves(data)
    if curves:
        out += ["", "## ROC curves", "", _img(roc_svg(curves, size=360, xmlns=True), "ROC curves")]
    out += ["", "## Reliability", ""]
    for lid, b in data["labels"].items():
        out.append(_img(reliability_svg(b, xmlns=True), f"reliability {lid}"))
    prob, conf = probability_rows(data), conformal_rows(data)
    if (prob or conf) and apparent_note(data):
        out += ["", f"**{apparent_note(data)}**"]
    if prob:
        out += ["", "## Calibrated probabilities", "", _PROBABILITY_NOTE, "", "| " + " | ".join(PROBABILITY_COLUMNS) + " |",
                "|---" * len(PROBABILITY_COLUMNS) + "|", *("| " + " | ".join(r) + " |" for r in prob)]
    if conf:
        out += ["", "## Conformal abstention", "", _CONFORMAL_NOTE, "", "| " + " | ".join(CONFORMAL_COLUMNS) + " |",
                "|---" * len(CONFORMAL_COLUMNS) + "|", *("| " + " | ".join(r) + " |" for r in conf)]
    mc = data.get("multiclass")
    if mc and mc.get("confusion"):
        out += ["", f"## Multiclass ({mc['n']} rows with a known class)", "",
                f"top-1 {_f(mc['top_1'])} · top-5 {_f(mc['top_5'])} · balanced accuracy {_f(mc['balanced_accuracy'])} · macro-F1 {_f(mc['macro_f1'])}",
                "", _confusion_md(mc["confusion"]["labels"], mc["confusion"]["matrix"], "true", "predicted")]
    v = data.get("verdicts")
    if v:
        out += ["", f"## Verdicts: human against medzero ({v['n']} rows)", "",
                f"Of {v['n']} rows with a human verdict: {verdict_counts(v)}. "
                f"Agreement and kappa are over the {v.get('n_judged', v['n'])} judged rows.", "",
                f"agreement {_f(v['agreement'])} · Cohen's kappa {_f(v['kappa'])} · linearly weighted kappa {_f(v['kappa_linear'])}",
                "", _confusion_md(v["labels"], v["confusion"]["matrix"], "human", "medzero",
                                  v["confusion"].get("abstained"), v.get("abstained_as", "not_applicable"), v["confusion"].get("uncertain"))]
    if data.get("errors"):
        out += ["", "## Rows that could not be classified", "", "| line | path | error |", "|---|---|---|"]
        out += [f"| {err['line']} | {err['path']} | {err['error']} |" for err in data["errors"]]
    out += ["", "## Reproducibility", "", "| | |", "|---|---|"]
    out += [f"| {k} | `{v}` |" for k, v in _repro_rows(data)]
    return "\n".join(out) + "\n"
