"""``RUN/report/index.html``: one static page that opens from disk, with its PNGs beside it.

Sections: cohort summary, slides (thumbnails with tissue, tumor-heatmap and mitosis overlays),
predictive models (metrics with confidence intervals beside the published figures; ROC and
scatter figures), what carries the signal (the feature-group ablation), biomarkers, features,
networks (the paper's Fig. 2 table), timings and throughput, failed slides. Each section is built on its own from the files it needs; a missing
input makes that section say "not computed" and why, and never stops the others.

Images are files under the report folder (``slides/``, ``figures/``), referenced by relative
paths, so the folder can be copied or zipped as a whole.
"""

from __future__ import annotations

import html
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from tupac import __version__
from tupac.errors import ReportError, TupacError
from tupac.heatmaps.commit import atomic_write_bytes
from tupac.report import tables
from tupac.report.config import ReportOptions
from tupac.report.qupath import tumor_threshold
from tupac.report.run import SlideEntry, list_slides, read_json, run_summary
from tupac.report.thumbnails import render_slide

__all__ = ["build_report", "ReportResult", "SECTIONS"]

SECTIONS = ("summary", "slides", "metrics", "ablation", "biomarkers", "features", "networks", "timings", "failed")
_TITLES = {
    "summary": "Cohort summary", "slides": "Slides", "metrics": "Predictive models",
    "ablation": "What carries the signal", "biomarkers": "Biomarkers",
    "features": "Features", "networks": "Networks", "timings": "Timings and throughput", "failed": "Failed slides",
}
_NOTE_ERRORS = (TupacError, OSError, ValueError, KeyError, TypeError)


@dataclass
class ReportResult:
    """Where the report is and what it could not show.

    Attributes
    ----------
    index : Path
    missing : dict of str to str
        Section -> why it says "not computed" (absent sections were built).
    images : list of Path
    """

    index: Path
    missing: dict[str, str] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)


# -- small HTML helpers ---------------------------------------------------------------------
def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e6):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """Cells are escaped unless wrapped in :class:`_Raw`."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c.html if isinstance(c, _Raw) else _e(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


@dataclass(frozen=True)
class _Raw:
    html: str


def _missing(reason: str) -> str:
    return f'<p class="missing">Not computed: {_e(reason)}</p>'


def _img(src: str, alt: str, cls: str = "") -> str:
    return f'<img src="{_e(src)}" alt="{_e(alt)}" class="{cls}" loading="lazy">'


# -- the context every section reads ---------------------------------------------------------
@dataclass
class _Context:
    run: Path
    out: Path
    entries: list[SlideEntry]
    summary: dict | None
    summary_source: str
    missing: dict[str, str]
    images: list[Path]
    max_side: int
    slide_mpp: float | None
    n_boot: int
    seed: int
    profile_networks: bool
    progress: Callable[[str], None]

    @property
    def records(self) -> dict[str, Any]:
        return {e.slide_id: e.record for e in self.entries if e.committed}

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out)).as_posix()


def _section_summary(ctx: _Context) -> str:
    s = ctx.summary
    done = [e for e in ctx.entries if e.committed]
    rows = [["Run folder", str(ctx.run)], ["Slide stores", len(ctx.entries)], ["Committed (done)", len(done)]]
    if s is not None:
        counts = s.get("counts", {})
        rows += [
            ["Slides in the last plan", s.get("total", "—")],
            ["Done / failed / unfinished",
             f"{counts.get('DONE', len(s.get('done', [])))} / {len(s.get('failed', []))} / {len(s.get('unfinished', []))}"],
            ["Skipped (already done)", len(s.get("skipped", []))],
            ["Status", "ok" if s.get("ok") else "incomplete"],
        ]
        skipped_stages = s.get("skipped_stages") or {}
        for stage, why in skipped_stages.items():
            rows.append([f"Stage skipped: {stage}", why])
    n_mit = sum(int((e.record.extra or {}).get("mitoses") or 0) for e in done)
    rows.append(["Mitoses detected (all done slides)", n_mit])
    areas = [float((e.record.extra or {}).get("tumor_area_mm2")) for e in done
             if isinstance((e.record.extra or {}).get("tumor_area_mm2"), (int, float))]
    if areas:
        rows.append(["Tumor area, median per slide", f"{np.median(areas):.2f} mm²"])
    models = sorted({f"{k} ({v[:12]})" for e in done for k, v in e.record.models.items()})
    if models:
        rows.append(["Models", ", ".join(models)])
    codes = sorted({str((e.record.code or {}).get("git") or (e.record.code or {}).get("tupac")) for e in done})
    if codes:
        rows.append(["Code version(s)", ", ".join(codes)])
    note = "" if s is not None else _missing(f"job summary ({ctx.summary_source}); counts come from the slide stores only")
    if s is None:
        ctx.missing["summary"] = ctx.summary_source
    return _table(["", ""], rows, "kv") + _no_tissue_warning(done) + _ood_warning(done) + note


def _no_tissue_warning(done: list[SlideEntry]) -> str:
    """A warning naming the committed slides on which the job found no tissue (blank slides)."""
    blank = [e.slide_id for e in done if (e.record.extra or {}).get("no_tissue")]
    if not blank:
        return ""
    return (f'<p class="warning">Warning: no tissue found on {len(blank)} slide(s): {_e(", ".join(blank))}. They are '
            "committed with empty heatmaps; their features are missing (flag no_tissue) and the predictive models "
            "leave them out.</p>")


def _ood_of(e: SlideEntry) -> dict:
    """The slide's out-of-distribution verdict from its commit record ({} before the check existed)."""
    return (e.record.extra or {}).get("ood") or {}


def _ood_warning(done: list[SlideEntry]) -> str:
    """A warning counting and naming the slides out of distribution for the models (:mod:`tupac.features.ood`)."""
    flagged = [e.slide_id for e in done if _ood_of(e).get("ood")]
    if not flagged:
        return ""
    return (f'<p class="warning ood">Warning: {len(flagged)} slide(s) out of distribution for the models: '
            f'{_e(", ".join(flagged))}. Their stain, texture, tumor fraction or mitotic density lies far outside the '
            "training data; their grades may be confidently wrong (reasons under each slide; flag qc_ood).</p>")


def _slide_ood_note(e: SlideEntry) -> str:
    """The per-slide warning with the check's reasons, or nothing when the slide was not flagged."""
    v = _ood_of(e)
    if not v.get("ood"):
        return ""
    return (f'<p class="warning ood">Out of distribution: {_e("; ".join(v.get("reasons") or []))}. '
            "The models were not trained on slides like this one; treat its grade with caution.</p>")


def _slide_card(ctx: _Context, e: SlideEntry) -> str:
    extra = e.record.extra or {}
    thr = tumor_threshold(e.record, None)
    facts = [f"tumor threshold {thr:g}"]
    if isinstance(extra.get("tumor_area_mm2"), (int, float)):
        facts.append(f"tumor {extra['tumor_area_mm2']:.2f} mm²")
    try:
        th = render_slide(e, ctx.out / "slides", thr, ctx.max_side, ctx.slide_mpp)
    except _NOTE_ERRORS as err:
        return (f'<figure class="slide"><figcaption><b>{_e(e.slide_id)}</b></figcaption>'
                f'{_missing(f"thumbnail: {err}")}{_slide_ood_note(e)}</figure>')
    ctx.images += [th.plain, th.overlay]
    if th.n_mitoses is not None:
        facts.append(f"{th.n_mitoses} mitoses")
    else:
        facts.append("no detections table")
    if th.tumor_fraction is not None:
        facts.append(f"{100 * th.tumor_fraction:.0f}% of tissue above threshold")
    links = []
    for kind in ("tumor", "mitoses"):
        p = ctx.run / "qupath" / f"{e.slide_id}.{kind}.geojson"
        if p.is_file():
            links.append(f'<a href="{_e(ctx.rel(p))}">{kind}.geojson</a>')
    qp = f' · QuPath: {" ".join(links)}' if links else ""
    return (
        f'<figure class="slide"><div class="pair">{_img(ctx.rel(th.plain), f"{e.slide_id} thumbnail")}'
        f'{_img(ctx.rel(th.overlay), f"{e.slide_id} overlays")}</div>'
        f'<figcaption><b>{_e(e.slide_id)}</b> · {_e(" · ".join(facts))}{qp}'
        f' <span class="dim">({th.mpp:.1f} µm/px)</span></figcaption>{_slide_ood_note(e)}</figure>'
    )


def _section_slides(ctx: _Context) -> str:
    done = [e for e in ctx.entries if e.committed]
    if not done:
        ctx.missing["slides"] = "no committed slide in RUN/slides"
        return _missing("no committed slide in RUN/slides")
    legend = (
        '<p class="legend">Left: the slide. Right: <span class="sw" style="background:rgb(40,170,70)"></span> tissue '
        'outline, tumor probability <span class="ramp"></span> 0 → 1 (opacity rises with probability; dark outline '
        'at the threshold), <span class="sw ring"></span> detected mitoses.</p>'
    )
    cards = []
    for e in done:
        ctx.progress(f"thumbnails {e.slide_id}")
        cards.append(_slide_card(ctx, e))
    return legend + '<div class="slides">' + "".join(cards) + "</div>"


def _ci(ci: Any) -> str:
    if not ci:
        return "—"
    lo, hi = ci
    return f"[{_num(lo)}, {_num(hi)}]"


def _section_metrics(ctx: _Context) -> str:
    pdir = ctx.run / "predict"
    metrics, why = read_json(pdir / "metrics.json")
    if not isinstance(metrics, dict):
        ctx.missing["metrics"] = f"predict/{why}" if why else "predict/metrics.json unreadable"
        return _missing(f"{ctx.missing['metrics']} (run `tupac fit --run RUN --labels ...`)")
    preds = None
    if (pdir / "predictions.csv").is_file():
        preds = pd.read_csv(pdir / "predictions.csv")
    rows = tables.metric_rows(metrics, preds, ctx.n_boot, ctx.seed)
    body, last_task = [], None
    for r in rows:
        pub = "<br>".join(
            f'{_num(p["value"])}{" " + _ci(p["ci"]) if p["ci"] else ""} <span class="src">{_e(p["source"])}</span>'
            for p in r["published"]
        ) or "—"
        ci = _ci(r["ci"]) + (f' <span class="src">{_e(r["ci_note"])}</span>' if r["ci"] else "")
        first = r["task"] != last_task
        last_task = r["task"]
        body.append([_Raw(f'<b>{_e(tables.TASK_TITLES[r["task"]])}</b>') if first else "",
                     (r["model"] or "—") if first else "", r["label"],
                     f'{_num(r["mean"])} ± {_num(r["sd"])}', _Raw(ci), _Raw(pub)])
    cfg = metrics.get("config", {})
    cohort = metrics.get("cohort", {})
    intro = (
        f'<p>{_e(cohort.get("n_slides", "?"))} slides, {_e(cohort.get("n_features", "?"))} features; '
        f'{_e(cfg.get("n_splits", "?"))}-fold nested cross-validation repeated {_e(cfg.get("repeats", "?"))} times '
        f'(seeds {_e(cfg.get("seeds", "?"))}); mean ± SD over repeats. The published figures are '
        '<b>as reported by the papers</b> (TUPAC16 test set, not this cohort), for orientation only.</p>'
    )
    out = intro + _table(["Task", "Best model", "Metric", "This run (CV)", "95% CI", "Published"], body, "metrics")
    figs = []
    for name, title in (("roc_grade.png", "ROC, mitotic score"), ("rna_scatter.png", "RNA score, predicted vs true")):
        src = pdir / name
        if src.is_file():
            dst = ctx.out / "figures" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            ctx.images.append(dst)
            figs.append(f'<figure class="fig">{_img(ctx.rel(dst), title)}<figcaption>{_e(title)}</figcaption></figure>')
        else:
            figs.append(f'<figure class="fig">{_missing(f"predict/{name} not found")}</figure>')
    return out + '<div class="figs">' + "".join(figs) + "</div>"


def _signed(v: Any) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:+.3f}"


def _section_ablation(ctx: _Context) -> str:
    """The feature-group ablation of ``RUN/predict/ablation.json``: per group, alone and removed."""
    doc, why = read_json(ctx.run / "predict" / "ablation.json")
    if not isinstance(doc, dict):
        # Not an error: the ablation is a fit option (tupac fit --no-ablation leaves it out).
        return (f'<p class="dim">No feature-group ablation in this run ({_e(why or "ablation.json unreadable")}; '
                'run <code>tupac fit --ablation</code>).</p>')
    # Deferred: tupac.predict pulls scikit-learn, which importing this module should not.
    from tupac.predict.ablation import ablation_frame

    frame = ablation_frame(doc)
    figs = [("grade_accuracy", "accuracy (grade)"), ("grade_kappa_quadratic", "κ (grade)"),
            ("rna_spearman_rho", "ρ (RNA)")]
    body = []
    for r in frame.to_dict("records"):
        name = "All features" if r["variant"] == "all" else f'{r["title"]}: {r["variant"]}'
        if r["status"] != "ok":
            note = {"absent": "absent from the table", "empty": "no column left",
                    "constant": "no column varies (chance)"}.get(r["status"], r["status"])
            body.append([name, _num(int(r["n_features"]))] + [note] * len(figs))
            continue
        cells = [_num(r[k]) if r["variant"] == "all" else f'{_num(r[k])} ({_signed(r["delta_" + k])})' for k, _ in figs]
        body.append([_Raw(f"<b>{_e(name)}</b>") if r["variant"] == "all" else name, _num(int(r["n_features"]))] + cells)
    st, models = doc.get("settings", {}), doc.get("models", {})
    intro = (
        f'<p>The best model of each task (grade: {_e(models.get("grade", "?"))}, RNA: {_e(models.get("rna", "?"))}) '
        f'cross-validated again on each feature group alone and on every feature but the group, with the fit\'s '
        f'{_e(st.get("n_splits", "?"))}-fold split and seed {_e(st.get("seed", "?"))} (its first repeat, which is the '
        '"All features" row), so only the columns differ. In brackets: the change against all features. A group '
        'that carries the signal keeps the figures when alone and loses them when removed; chance is 0 for κ and ρ '
        'and about 1/3 for the accuracy.</p>'
    )
    return intro + _table(["Features", "Columns"] + [label for _, label in figs], body, "num")


def _dictionary() -> pd.DataFrame | None:
    try:
        # Deferred: this pulls sklearn, which importing this module should not.
        from tupac.features import feature_dictionary

        return feature_dictionary()
    except Exception:  # the dictionary only labels groups; a report without them is still right
        return None


def _section_biomarkers(ctx: _Context) -> str:
    path = ctx.run / "predict" / "biomarkers.csv"
    if not path.is_file():
        ctx.missing["biomarkers"] = "predict/biomarkers.csv not found"
        return _missing(ctx.missing["biomarkers"])
    rows, counts = tables.biomarker_rows(pd.read_csv(path), _dictionary())
    # Deferred: this pulls matplotlib, sklearn, which importing this module should not.
    from tupac.predict.biomarkers import P_THRESHOLD

    intro = (
        f'<p>{counts["n_features"]} features tested; p &lt; {P_THRESHOLD:g}: {counts["significant_rna"]} with the RNA '
        f'score (linear regression), {counts["significant_grade"]} with the grade (Kruskal-Wallis). q = '
        f'Benjamini-Hochberg. The {len(rows)} strongest:</p>'
    )
    body = [[r.feature, r.group or "—", _num(r.rna_r), _num(r.p_rna), _num(r.q_rna), _num(r.grade_rho),
             _num(r.p_grade), _num(r.q_grade)] for r in rows.itertuples()]
    return intro + _table(["Feature", "Group", "r (RNA)", "p (RNA)", "q (RNA)", "ρ (grade)", "p (grade)", "q (grade)"],
                          body, "num")


def _section_features(ctx: _Context) -> str:
    path = ctx.run / "features.parquet"
    if not path.is_file():
        ctx.missing["features"] = "features.parquet not found"
        return _missing(ctx.missing["features"])
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata  # the footer only: no column data is read
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    cols = [c for c in names if c != "slide_id" and not c.startswith("__")]
    d = _dictionary()
    groups = dict(zip(d["name"], d["group"])) if d is not None else {}
    by_group: dict[str, int] = {}
    for c in cols:
        g = groups.get(c, "quality control (not features)" if c.startswith("qc_") else "other (not in the feature dictionary)")
        by_group[g] = by_group.get(g, 0) + 1
    rows = [[g, n] for g, n in sorted(by_group.items(), key=lambda kv: -kv[1])]
    return (f"<p>{meta.num_rows} slides × {len(cols)} features (<code>features.parquet</code>).</p>"
            + _table(["Group", "Features"], rows, "num"))


def _network_rows(ctx: _Context) -> tuple[list[dict] | None, str]:
    for p in (ctx.run / "models.json", ctx.out / "models.json"):
        data, _ = read_json(p)
        if isinstance(data, list) and data:
            return data, str(p.relative_to(ctx.run)) if p.is_relative_to(ctx.run) else str(p)
    if not ctx.profile_networks:
        return None, "no RUN/models.json (write it with `tupac models --json > RUN/models.json`, or pass --profile-networks)"
    import json

    # Deferred: this pulls torch, which importing this module should not.
    from tupac.models.profile import profile_models

    ctx.progress("profiling networks")
    rows = profile_models(repeats=3, on_model=lambda n: ctx.progress(f"profiling {n}"))
    (ctx.out / "models.json").write_text(json.dumps(rows, indent=2))
    return rows, "measured now (cached in models.json)"


def _section_networks(ctx: _Context) -> str:
    rows, source = _network_rows(ctx)
    if rows is None:
        ctx.missing["networks"] = source
        return _missing(source)
    body = [[r.get("name"), r.get("architecture"), r.get("task"), _num(r.get("mpp"), 2), r.get("patch_size"),
             f'{r["params"] / 1e6:.2f} M' if isinstance(r.get("params"), (int, float)) else "—",
             r.get("receptive_field"), r.get("output_stride"), _num(r.get("fully_convolutional")),
             f'{r.get("conv_layers", "—")} / {r.get("pool_layers", "—")} / {r.get("fc_layers", "—")}',
             _num(r.get("forward_ms"), 1)] for r in rows]
    return (f'<p>Registered networks, as in the paper\'s Fig. 2 (source: {_e(source)}; forward time: one native-size '
            'input on the machine that measured it).</p>'
            + _table(["Name", "Architecture", "Task", "µm/px", "Patch", "Params", "Receptive field", "Stride",
                      "Fully conv.", "Conv / pool / FC", "Forward ms"], body, "num"))


def _section_timings(ctx: _Context) -> str:
    tim = tables.timing_table(ctx.records)
    tp = tables.throughput_rows(tim, ctx.summary)
    if tim.empty and not tp:
        ctx.missing["timings"] = "no commit records and no job summary"
        return _missing(ctx.missing["timings"])
    out = _table(["Quantity", "Value", "Source"], [list(r) for r in tp], "kv") if tp else ""
    stages = [c for c in tim.columns if c != "created"]
    if len(tim):
        body = [[sid, *[_num(v, 2) for v in row[stages]]] for sid, row in tim.iterrows()]
        mean = tim[stages].mean(axis=0)
        body.append([_Raw("<b>mean</b>"), *[_Raw(f"<b>{_num(v, 2)}</b>") for v in mean]])
        out += "<h3>Seconds per stage, per slide (commit records)</h3>" + _table(["Slide", *stages], body, "num")
    return out


def _section_failed(ctx: _Context) -> str:
    failed = list((ctx.summary or {}).get("failed") or [])
    known = {f.get("slide_id") for f in failed}
    for e in ctx.entries:  # stores without a commit that the summary does not list: interrupted
        if not e.committed and e.slide_id not in known and e.slide_id not in set((ctx.summary or {}).get("unfinished") or []):
            failed.append({"slide_id": e.slide_id, "error": f"store not committed ({e.problem})", "attempts": None})
    unfinished = list((ctx.summary or {}).get("unfinished") or [])
    if not failed and not unfinished:
        if ctx.summary is None:
            return '<p class="ok">No failed slide among the stores (no job summary to say more).</p>'
        return '<p class="ok">No slide failed.</p>'
    body = [[f.get("slide_id"), f.get("path", "—"), f.get("attempts") if f.get("attempts") is not None else "—",
             "yes" if f.get("given_up") else "no", f.get("error") or "—"] for f in failed]
    body += [[sid, "—", "—", "no", "unfinished (pending or running when the summary was written)"] for sid in unfinished]
    return _table(["Slide", "File", "Attempts", "Given up", "Reason"], body, "failed")


_BUILDERS = {
    "summary": _section_summary, "slides": _section_slides, "metrics": _section_metrics, "ablation": _section_ablation,
    "biomarkers": _section_biomarkers, "features": _section_features, "networks": _section_networks,
    "timings": _section_timings, "failed": _section_failed,
}


def build_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    max_side: int = ReportOptions.max_side,
    slide_mpp: float | None = None,
    n_boot: int = ReportOptions.n_boot,
    seed: int = 0,
    profile_networks: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write the static HTML report of a run.

    Parameters
    ----------
    run_dir : path-like
        The run folder (``RUN/``).
    out_dir : path-like, optional
        Report folder (default ``RUN/report``); ``index.html``, ``slides/*.png``, ``figures/*.png``.
    max_side, n_boot : int
        :class:`~tupac.report.config.ReportOptions` (defaults and meaning there).
    slide_mpp : float, optional
        Level-0 µm/px for slides whose file lacks it.
    seed : int
        Seed of the kappa / Spearman confidence intervals.
    profile_networks : bool
        Measure the network table now when neither ``RUN/models.json`` nor ``OUT/models.json`` exists.
    progress : callable(str), optional

    Returns
    -------
    ReportResult

    Raises
    ------
    ReportError
        ``run_dir`` is not a folder.
    """
    run = Path(run_dir).resolve()
    if not run.is_dir():
        raise ReportError(run, "no such run folder")
    out = Path(out_dir).resolve() if out_dir is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("slides", "figures"):  # stale images of slides no longer in the run would linger
        shutil.rmtree(out / sub, ignore_errors=True)
    summary, source = run_summary(run)
    ctx = _Context(run, out, list_slides(run), summary, source, {}, [], max_side, slide_mpp, n_boot, seed,
                   profile_networks, progress or (lambda _m: None))
    parts = []
    for key in SECTIONS:
        try:
            body = _BUILDERS[key](ctx)
        except _NOTE_ERRORS as err:  # one broken input spoils its section only
            ctx.missing[key] = f"{type(err).__name__}: {err}"
            body = _missing(ctx.missing[key])
        parts.append(f'<section id="{key}"><h2>{_e(_TITLES[key])}</h2>{body}</section>')

    nav = " ".join(f'<a href="#{k}">{_e(_TITLES[k])}</a>' for k in SECTIONS)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = _PAGE.format(
        title=_e(f"tupac report: {run.name}"), css=_CSS, nav=nav, body="\n".join(parts),
        meta=_e(f"{run} · generated {when} · tupac {__version__}"),
    )

    index = atomic_write_bytes(out / "index.html", page.encode("utf-8"))
    return ReportResult(index, ctx.missing, ctx.images)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><header><h1>{title}</h1><p class="dim">{meta}</p><nav>{nav}</nav></header>
<main>
{body}
</main></body></html>
"""

_CSS = """
:root { --fg:#1d2330; --dim:#6b7385; --line:#dde1ea; --accent:#8a1c4a; --bg:#fafbfc; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { background:#fff; border-bottom:1px solid var(--line); padding:16px 32px 8px; position:sticky; top:0; z-index:2; }
h1 { margin:0; font-size:22px; color:var(--accent); }
h2 { font-size:18px; margin:0 0 12px; padding-bottom:6px; border-bottom:2px solid var(--accent); }
h3 { font-size:15px; margin:18px 0 8px; }
nav a { margin-right:14px; color:var(--accent); text-decoration:none; font-weight:600; }
nav { padding:6px 0; }
main { max-width:1320px; margin:0 auto; padding:8px 32px 48px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:16px 20px; margin:18px 0; }
table { border-collapse:collapse; width:100%; margin:6px 0; }
th, td { border-bottom:1px solid var(--line); padding:5px 8px; text-align:left; vertical-align:top; }
th { background:#f2f4f8; font-weight:600; }
table.num td, table.metrics td { font-variant-numeric:tabular-nums; }
table.kv td:first-child { width:34%; color:var(--dim); }
table.kv thead { display:none; }
.dim, .src { color:var(--dim); }
.src { font-size:12px; display:block; }
.missing { color:#8a5a00; background:#fff7e0; border:1px solid #f0d890; padding:6px 10px; border-radius:6px; }
.warning { color:#7a1d00; background:#fff0e8; border:1px solid #f0b090; padding:6px 10px; border-radius:6px; }
.ok { color:#1f6f3a; }
.slides { display:grid; grid-template-columns:repeat(auto-fill,minmax(520px,1fr)); gap:16px; }
figure { margin:0; }
figure.slide { border:1px solid var(--line); border-radius:6px; padding:8px; background:#fcfcfd; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:6px; }
.pair img, .fig img { width:100%; height:auto; display:block; border:1px solid var(--line); }
figcaption { font-size:13px; margin-top:6px; }
.figs { display:grid; grid-template-columns:repeat(auto-fit,minmax(420px,1fr)); gap:16px; margin-top:14px; }
.legend { color:var(--dim); }
.sw { display:inline-block; width:14px; height:10px; vertical-align:middle; }
.sw.ring { width:12px; height:12px; border:2px solid rgb(0,230,255); border-radius:50%; }
.ramp { display:inline-block; width:90px; height:10px; vertical-align:middle;
  background:linear-gradient(90deg,rgb(0,0,4),rgb(85,15,109),rgb(186,54,85),rgb(249,140,10),rgb(252,255,164)); }
table.failed td:last-child { color:#a01c1c; }
"""
