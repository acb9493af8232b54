"""The HTML report warns about slides the out-of-distribution check flagged (a count at the top, reasons per slide)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from runs import phantom_run  # noqa: E402

from tupac.report.html import build_report  # noqa: E402

REASON = "sharpness (Laplacian variance) 3.1e-05 below the training range 0.00173-0.00287 (mitosis model, z=-8.1)"


def _sections(html: str) -> dict[str, str]:
    parts = re.split(r'<section id="(\w+)">', html)[1:]
    return dict(zip(parts[::2], parts[1::2]))


def test_report_warns_about_out_of_distribution_slides(small_cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    phantom_run(small_cohort, run)
    clean = _sections(build_report(run, tmp_path / "clean", max_side=200).index.read_text())
    assert "out of distribution" not in clean["summary"] and "Out of distribution" not in clean["slides"]

    flagged = sorted(p.name.removesuffix(".zarr") for p in (run / "slides").glob("*.zarr"))[1]
    record = run / "slides" / f"{flagged}.zarr" / "commit.json"
    data = json.loads(record.read_text())
    data["extra"]["ood"] = {"ood": True, "reasons": [REASON], "checked": ["mitosis:sharpness"], "note": "", "stats": {}}
    record.write_text(json.dumps(data))
    sec = _sections(build_report(run, tmp_path / "report", max_side=200).index.read_text())
    assert (f'<p class="warning ood">Warning: 1 slide(s) out of distribution for the models: {flagged}.'
            in sec["summary"])
    card = sec["slides"][sec["slides"].index(f"<b>{flagged}</b>"):]
    card = card[: card.index("</figure>")]
    assert f'<p class="warning ood">Out of distribution: {REASON}.' in card
    assert sec["slides"].count("Out of distribution:") == 1
