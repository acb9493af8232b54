"""The image's pip requirements for one variant, read from pyproject.toml (run by infra/Dockerfile).

    python infra/requirements.py gpu pyproject.toml --pin "ray[default]==2.60.0" --pin mlflow==3.17.2

prints one requirement a line: the project's dependencies, with

- ``torch`` and ``torchvision`` left out: the Dockerfile installs them first from the variant's
  wheel index (CUDA 13 or CPU builds), and a later install finds the pin satisfied;
- ``cucim-*`` left out of the ``cpu`` variant (cuCIM needs a CUDA GPU; tupac reads slides with
  OpenSlide when cuCIM is absent);
- every ``--pin`` replacing the dependency of the same name, so the image holds exactly the Ray the
  KubeRay ``rayVersion`` names and the MLflow the tracking server runs.

Standard library only: it runs in the image before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

VARIANTS = ("gpu", "cpu")
INSTALLED_FIRST = ("torch", "torchvision")  # from the variant's wheel index, before the rest
GPU_ONLY_PREFIXES = ("cucim",)


def dist_name(requirement: str) -> str:
    """The normalized distribution name of a requirement string (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(variant: str, dependencies: list[str], pins: list[str] = ()) -> list[str]:
    """The requirements of ``variant`` from the project's ``dependencies``, ``pins`` applied."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    by_name = {dist_name(p): p for p in pins}
    names = {dist_name(d) for d in dependencies}
    unknown = sorted(set(by_name) - names)
    if unknown:
        raise ValueError(f"--pin of packages that are not dependencies: {', '.join(unknown)}")
    out = []
    for dep in dependencies:
        name = dist_name(dep)
        if name in INSTALLED_FIRST:
            continue
        if variant == "cpu" and name.startswith(GPU_ONLY_PREFIXES):
            continue
        out.append(by_name.get(name, dep))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--pin", action="append", default=[], help="exact requirement replacing a dependency")
    args = parser.parse_args(argv)
    deps = tomllib.loads(args.pyproject.read_text())["project"]["dependencies"]
    try:
        lines = requirements(args.variant, deps, args.pin)
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
