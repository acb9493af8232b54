"""Visual styles of phantom slides: how a "lab" cuts, stains, scans and compresses its slides.

A style changes more than the stain vectors, so that a model trained on some styles can be tested on
an unseen one (domain shift): the shape and texture of the nuclei and mitotic figures, how many
mitosis look-alikes there are, which stain centers are used, focus blur, JPEG quality, tissue folds
and pen marks. The style never changes what the truth means: ``mitoses.csv`` lists exactly the
mitoses drawn, and ``tissue.png``/``tumor.png`` are the section's regions whatever lies on them.

Registry (:data:`STYLES`):

=========  ==========================================================================================
name       what it changes (relative to "default")
=========  ==========================================================================================
default    today's look, byte for byte: centers A, B, C in turn; JPEG Q 80; no blur, folds, pen
lab2       smaller, rounder, smoother tumor nuclei with faint chromatin; thin, tidy metaphase plates
           and fewer chromosome arms; a few pyknotic nuclei (3 %); pale center P alternating with A;
           slight blur (sigma 0-0.9 px); JPEG Q 92; a pen mark on about half of the slides
lab3       larger, elongated, irregular nuclei with coarse chromatin; thick plates, ragged prophase
           clumps with many arms; lymphocyte clusters (3 per mm^2 of tissue); centers B and C;
           blur 0.4-1.4 px; JPEG Q 70; about one tissue fold per slide
lab4       the hard one: 14 % pyknotic nuclei (small, dark, dense: the classic mitosis mimic),
           three times the apoptotic bodies, 20 % hyperchromatic nuclei, lymphocyte clusters
           (4 per mm^2), fainter and smaller mitoses; dark-hematoxylin center D only; blur
           0.8-2.2 px; JPEG Q 60; folds and pen marks
=========  ==========================================================================================

Every length is in level-0 pixels (0.25 um/px) unless its name says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Style:
    """The visual parameters of one phantom "lab".

    Attributes
    ----------
    name : str
        Registry key, recorded in ``truth/cohort.json``.
    description : str
        One line for ``tupac synth --list-styles``.
    nucleus_scale : float
        Multiplier on the tumor nucleus semi-axes (default 1: 18-30 px, i.e. 4.5-7.5 um).
    nucleus_aspect : (float, float)
        Range of the minor/major axis ratio of tumor nuclei (1 = round).
    nucleus_wobble : float
        Boundary irregularity: standard deviation of the relative amplitude of the 2nd-5th
        boundary harmonics (dimensionless; 0.10 today).
    chromatin : float
        Strength of the clumped chromatin texture (hematoxylin amount per unit speckle; 0.40 today).
    hyperchromatic_fraction : float
        Fraction of tumor nucleus sprites drawn uniformly dark and coarse (0.1 today).
    mitosis_plate_width : (float, float)
        Range of the thickness of metaphase/anaphase plates (px; 10-16 today).
    mitosis_clump_spread : float
        Standard deviation of chromosomes around their clump center in prophase (px; 2.8 today):
        larger is more ragged.
    mitosis_arms : float
        Multiplier on the number of chromosome arms sticking out of a figure (1 today).
    mitosis_darkness : (float, float)
        Range of the peak hematoxylin amount of a figure (1.9-2.5 today).
    mitosis_scale : float
        Multiplier on the extent of a figure (prophase radius, plate length).
    apoptosis_rate : (float, float)
        Range of the apoptotic-body rate per mm^2 of tumor (drawn once per slide; 4-10 today).
    pyknotic_fraction : float
        Fraction of tumor nuclei drawn small, round, very dark and dense (pyknotic: the classic
        mitosis mimic). Not mitoses: never in ``mitoses.csv``; listed in ``lookalikes.csv``.
    lymph_cluster_rate : float
        Dense lymphocyte clusters per mm^2 of tissue.
    lymph_cluster_radius_um : (float, float)
        Range of the cluster radius (um).
    centers : tuple of str
        Stain centers (:mod:`tupac.synth.stain`) the slides use in turn.
    blur_sigma : (float, float)
        Range of the Gaussian focus blur (level-0 px). The sigma varies smoothly over a slide
        (a focus field); (0, 0) is sharp.
    jpeg_quality : int
        JPEG quality of the SVS tiles (1-100).
    folds_per_slide : float
        Mean number (Poisson) of tissue folds: bands where the section lies on itself, so the
        stain density doubles.
    pen_marks_per_slide : float
        Mean number (Poisson) of pen strokes (green, blue or black ink) over glass or tissue.
    """

    name: str
    description: str = ""
    nucleus_scale: float = 1.0
    nucleus_aspect: tuple[float, float] = (0.62, 0.95)
    nucleus_wobble: float = 0.10
    chromatin: float = 0.40
    hyperchromatic_fraction: float = 0.1
    mitosis_plate_width: tuple[float, float] = (10.0, 16.0)
    mitosis_clump_spread: float = 2.8
    mitosis_arms: float = 1.0
    mitosis_darkness: tuple[float, float] = (1.9, 2.5)
    mitosis_scale: float = 1.0
    apoptosis_rate: tuple[float, float] = (4.0, 10.0)
    pyknotic_fraction: float = 0.0
    lymph_cluster_rate: float = 0.0
    lymph_cluster_radius_um: tuple[float, float] = (30.0, 60.0)
    centers: tuple[str, ...] = ("A", "B", "C")
    blur_sigma: tuple[float, float] = (0.0, 0.0)
    jpeg_quality: int = 80
    folds_per_slide: float = 0.0
    pen_marks_per_slide: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"style {self.name!r}: jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.blur_sigma[0] < 0 or self.blur_sigma[1] < self.blur_sigma[0]:
            raise ValueError(f"style {self.name!r}: blur_sigma must be 0 <= lo <= hi, got {self.blur_sigma}")
        if not self.centers:
            raise ValueError(f"style {self.name!r}: needs at least one center")
        if not 0.0 <= self.pyknotic_fraction < 1.0:
            raise ValueError(f"style {self.name!r}: pyknotic_fraction must be in [0, 1), got {self.pyknotic_fraction}")

    @property
    def blur_margin(self) -> int:
        """Level-0 px a block must be rendered beyond its edges so that blurring it is seamless
        (scipy's Gaussian reaches ``int(4 * sigma + 0.5)`` px); 0 when sharp."""
        hi = self.blur_sigma[1]
        return int(4.0 * hi + 0.5) + 1 if hi > 0 else 0

    def to_dict(self) -> dict:
        """Plain JSON-able parameters (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEFAULT = Style("default", "today's look: centers A/B/C, JPEG Q80, sharp, no folds or pen marks")

STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        DEFAULT,
        Style(
            "lab2", "small round smooth nuclei, thin plates, pale center P with A, slight blur, Q92, pen marks",
            nucleus_scale=0.85, nucleus_aspect=(0.85, 1.0), nucleus_wobble=0.04, chromatin=0.22,
            hyperchromatic_fraction=0.05, mitosis_plate_width=(6.5, 10.0), mitosis_clump_spread=2.0,
            mitosis_arms=0.6, mitosis_scale=0.9, pyknotic_fraction=0.03, centers=("P", "A"),
            blur_sigma=(0.0, 0.9), jpeg_quality=92, pen_marks_per_slide=0.5,
        ),
        Style(
            "lab3", "large elongated irregular nuclei, thick ragged mitoses, lymph clusters, B/C, blur, Q70, folds",
            nucleus_scale=1.12, nucleus_aspect=(0.42, 0.72), nucleus_wobble=0.18, chromatin=0.65,
            mitosis_plate_width=(15.0, 21.0), mitosis_clump_spread=4.2, mitosis_arms=1.5, mitosis_scale=1.1,
            lymph_cluster_rate=3.0, centers=("B", "C"), blur_sigma=(0.4, 1.4), jpeg_quality=70,
            folds_per_slide=1.0,
        ),
        Style(
            "lab4", "hard: many pyknotic/apoptotic mimics, lymph clusters, dark center D, blur, Q60, folds and pen",
            nucleus_aspect=(0.55, 0.9), nucleus_wobble=0.13, chromatin=0.5, hyperchromatic_fraction=0.2,
            mitosis_darkness=(1.6, 2.2), mitosis_scale=0.9, apoptosis_rate=(15.0, 30.0), pyknotic_fraction=0.14,
            lymph_cluster_rate=4.0, centers=("D",), blur_sigma=(0.8, 2.2), jpeg_quality=60,
            folds_per_slide=1.0, pen_marks_per_slide=1.0,
        ),
    )
}
"""Every named style; "default" is today's look, byte for byte."""


def style_by_name(name: str) -> Style:
    """The registered style called ``name``.

    Raises
    ------
    ValueError
        ``name`` is not registered (the message lists the names).
    """
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown style {name!r}; expected one of {sorted(STYLES)}") from None
