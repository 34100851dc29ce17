"""Phantom families: how widely patients, scanners and acquisitions are drawn.

``classic`` is the original phantom (one template scaled, three fixed contrast tables, ±6°);
it stays as it was, so the demo and the tests keep their cohorts. ``wide`` randomises what real
data varies in, so that a model trained on it has to learn bone rather than one phantom;
``randomised`` is ``wide`` with half the patients rendered in a random contrast (every
tissue's signal and the bone curves' levels drawn at random, as SynthSeg trains on random
contrasts), so that a model must find bone by its shape and its contrast to its neighbours,
not by one technique's grey values; ``shifted`` draws from ranges disjoint from ``wide`` in
three ways (an unseen contrast family with a steeper bone curve, unseen resolutions, unseen
pathology) to test a model on what it never trained on. The ranges are in :data:`FAMILIES`
and in ``README.md`` beside this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from bonect.phantom.acquisition import Acquisition, Orientation
from bonect.phantom.anatomy import PatientParams, draw_patient
from bonect.phantom.contrast import MR_BONE, MR_SIGNAL, BoneCurve, MrAppearance, classic_appearance
from bonect.phantom.pathology import Pathology
from bonect.phantom.shapes import Tissue

Family = Literal["classic", "wide", "randomised", "shifted"]
FAMILY_NAMES: tuple[Family, ...] = ("classic", "wide", "randomised", "shifted")
Technique = Literal["zte", "ute", "gre", "petra"]
AgeGroup = Literal["neonate", "child", "adult", "elderly"]
Range = tuple[float, float]


@dataclass(frozen=True)
class AgeRanges:
    """The anatomy of one age group (uniform ranges; counts are integers in [lo, hi])."""

    scale: Range
    mineralisation: Range
    vault_mm: Range
    sutures_open: float  # probability
    sinus: Range  # each sinus drawn on its own
    mastoid_cells: tuple[int, int]
    jaw: Range
    missing_teeth: tuple[int, int]


AGE_GROUPS: dict[AgeGroup, AgeRanges] = {
    "neonate": AgeRanges((0.62, 0.72), (0.2, 0.35), (1.2, 2.2), 1.0, (0.0, 0.15), (0, 0),
                         (0.70, 0.80), (20, 20)),
    "child": AgeRanges((0.78, 0.92), (0.3, 0.65), (2.5, 4.5), 0.6, (0.3, 0.8), (0, 8),
                       (0.80, 0.95), (0, 4)),
    "adult": AgeRanges((0.92, 1.08), (0.7, 1.0), (4.5, 8.5), 0.0, (0.7, 1.3), (8, 24),
                       (0.92, 1.10), (0, 4)),
    "elderly": AgeRanges((0.92, 1.06), (0.4, 0.75), (3.5, 9.0), 0.0, (0.9, 1.45), (6, 24),
                         (0.85, 1.0), (4, 20)),
}  # fmt: skip


@dataclass(frozen=True)
class FamilyRanges:
    """What one family draws from (uniform unless said)."""

    techniques: tuple[Technique, ...]
    ages: dict[AgeGroup, float]  # probabilities
    bone_gamma: Range  # the bone-signal curve's exponent (1: linear)
    bone_ratio: Range | None  # the densest bone's signal / the least dense's (None: the
    # technique's table, spread by a log-normal std of 0.15)
    tissue_spread: float  # log-normal std of every tissue's signal around its technique's
    pixel_mm: Range
    slice_mm: Range
    pathologies: tuple[str, ...]  # of "fillings", "mucus", "haemorrhage", "craniotomy"
    pathology_probability: float  # per pathology and patient
    pose_deg: float = 15.0  # each rotation in ±this
    shift_mm: float = 12.0
    vertex_cut_mm: Range = (0.0, 30.0)  # field of view cut at the top with probability 0.3
    neck_cut_mm: Range = (0.0, 85.0)  # ... at the bottom (85 mm: below the chin) with 0.4
    noise: Range = (0.015, 0.07)
    bias: Range = (0.05, 0.4)
    gain: Range = (50.0, 5000.0)  # arbitrary receiver gain (log-uniform)
    ringing_probability: float = 0.3
    motion_probability: float = 0.25
    orientations: tuple[Orientation, ...] = ("axial", "sagittal", "coronal")
    random_contrast: float = 0.0  # share of patients in a random contrast (see RANDOM_CONTRAST)
    notes: dict[str, str] = field(default_factory=dict)


FAMILIES: dict[Family, FamilyRanges] = {
    "wide": FamilyRanges(
        techniques=("zte", "ute", "gre"),
        ages={"neonate": 0.08, "child": 0.32, "adult": 0.45, "elderly": 0.15},
        bone_gamma=(0.6, 1.6),
        bone_ratio=(0.08, 0.8),
        tissue_spread=0.15,
        pixel_mm=(1.0, 2.0),
        slice_mm=(1.0, 2.4),
        pathologies=("fillings", "mucus", "haemorrhage"),
        pathology_probability=0.35,
    ),
    "shifted": FamilyRanges(
        techniques=("petra",),
        ages={"child": 0.4, "adult": 0.6},
        bone_gamma=(1.8, 2.5),
        bone_ratio=None,
        tissue_spread=0.15,
        pixel_mm=(0.7, 0.95),
        slice_mm=(2.5, 3.2),
        pathologies=("craniotomy", "fillings"),
        pathology_probability=0.6,
    ),
}

FAMILIES["randomised"] = replace(FAMILIES["wide"], random_contrast=0.5)


@dataclass(frozen=True)
class RandomContrast:
    """The ranges of a random contrast (uniform, relative to soft tissue = 1). Air, teeth and
    metal stay dark as in every bone-MR technique, and bone still darkens as it densifies (the
    densest bone's signal a share of the least dense's); the curve's exponent stays the
    family's, so the shifted family's steeper curve remains unseen."""

    tissue: Range = (0.15, 1.6)
    cortical: Range = (0.15, 1.1)  # the least dense cortical bone's signal
    cancellous: Range = (0.3, 1.3)
    densest_share: Range = (0.2, 0.95)


RANDOM_CONTRAST = RandomContrast()

# Base signal tables of the techniques; PETRA is only in the shifted family.
PETRA_SIGNAL: dict[Tissue, float] = {
    Tissue.SOFT: 1.0,
    Tissue.FAT: 0.9,
    Tissue.BRAIN: 0.95,
    Tissue.CSF: 1.0,
    Tissue.SHORT_T2: 0.55,
    Tissue.SUTURE: 0.8,
    Tissue.EYE: 1.0,
    Tissue.DISC: 1.0,
    Tissue.TEETH: 0.08,
}
PETRA_BONE = {Tissue.CORTICAL: (0.8, 0.25), Tissue.CANCELLOUS: (1.0, 0.6)}
FLUID_SIGNAL: dict[Technique, tuple[float, float]] = {  # (mucus, blood) relative to soft tissue
    "zte": (1.05, 0.95),
    "ute": (0.95, 1.0),
    "gre": (0.7, 0.5),
    "petra": (1.05, 0.9),
}


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def draw_technique(seed: int, family: Family) -> Technique:
    """The bone-MR technique of a patient of ``family``."""
    if family == "classic":
        return "zte"
    techniques = FAMILIES[family].techniques
    return techniques[int(np.random.default_rng([seed, 11]).integers(len(techniques)))]


def draw_family_patient(seed: int, family: Family) -> PatientParams:
    """A patient of ``family``: age group, independently varying anatomy, pose, pathology."""
    if family == "classic":
        return draw_patient(seed)
    ranges = FAMILIES[family]
    rng = np.random.default_rng([seed, 12])
    groups = list(ranges.ages)
    group: AgeGroup = groups[int(rng.choice(len(groups), p=list(ranges.ages.values())))]
    age = AGE_GROUPS[group]
    sinus = tuple(_uniform(rng, age.sinus) for _ in range(4))
    maxillary = float(np.mean(sinus[1:3]))
    n_missing = int(rng.integers(age.missing_teeth[0], age.missing_teeth[1] + 1))
    missing = tuple(sorted(int(i) for i in rng.choice(20, size=n_missing, replace=False)))
    params = replace(
        draw_patient(seed),
        paediatric=group in ("neonate", "child"),
        scale=_uniform(rng, age.scale),
        mineralisation=_uniform(rng, age.mineralisation),
        skull_thickness_mm=_uniform(rng, age.vault_mm),
        sutures_open=bool(rng.random() < age.sutures_open),
        sinus_scale=maxillary,
        mastoid_cells=int(rng.integers(age.mastoid_cells[0], age.mastoid_cells[1] + 1)),
        rotation_deg=_triple(rng, ranges.pose_deg),
        shift_mm=_triple(rng, ranges.shift_mm),
        shape_scale=_triple(rng, 0.07, centre=1.0),
        jaw_scale=_uniform(rng, age.jaw),
        sinus_scales=(sinus[0], sinus[1], sinus[2], sinus[3]),
        mastoid_cell_mm=(1.0, _uniform(rng, (2.0, 4.5))),
        missing_teeth=missing,
    )
    return replace(params, pathology=_draw_pathology(rng, ranges, missing))


def _triple(
    rng: np.random.Generator, half_width: float, *, centre: float = 0.0
) -> tuple[float, float, float]:
    v = rng.uniform(centre - half_width, centre + half_width, size=3)
    return (float(v[0]), float(v[1]), float(v[2]))


def _draw_pathology(
    rng: np.random.Generator, ranges: FamilyRanges, missing: tuple[int, ...]
) -> Pathology:
    drawn = {name: bool(rng.random() < ranges.pathology_probability) for name in ranges.pathologies}
    present = [i for i in range(20) if i not in missing]
    fillings: tuple[int, ...] = ()
    if drawn.get("fillings") and present:
        count = int(rng.integers(1, min(6, len(present)) + 1))
        fillings = tuple(sorted(int(i) for i in rng.choice(present, size=count, replace=False)))
    mucus = (0.0, 0.0, 0.0, 0.0)
    if drawn.get("mucus"):
        fractions = rng.uniform(0.2, 0.9, size=4) * (rng.random(4) < 0.6)
        mucus = (float(fractions[0]), float(fractions[1]), float(fractions[2]), float(fractions[3]))
    haemorrhage = None
    if drawn.get("haemorrhage"):
        c = rng.uniform((-40.0, -30.0, 5.0), (40.0, 50.0, 55.0))
        haemorrhage = (float(c[0]), float(c[1]), float(c[2]), _uniform(rng, (6.0, 18.0)))
    craniotomy = None
    if drawn.get("craniotomy"):
        d = rng.normal(size=3) * np.array([1.0, 1.0, 0.5]) + np.array([0.0, 0.0, 0.8])
        craniotomy = (float(d[0]), float(d[1]), float(d[2]), _uniform(rng, (15.0, 30.0)))
    return Pathology(
        fillings=fillings,
        craniotomy=craniotomy,
        plate=craniotomy is not None and bool(rng.random() < 0.7),
        haemorrhage=haemorrhage,
        mucus=mucus,
    )


def draw_appearance(seed: int, family: Family, technique: Technique) -> MrAppearance:
    """A scanner's rendering of ``technique``: every tissue's signal, the bone curves, noise,
    bias, metal blooming and artefacts, drawn for ``family``."""
    if family == "classic":
        if technique == "petra":
            raise ValueError("the classic phantom has no PETRA contrast")
        return classic_appearance(technique)
    ranges = FAMILIES[family]
    rng = np.random.default_rng([seed, 13])
    if technique == "petra":
        base, bone = PETRA_SIGNAL, PETRA_BONE
    else:
        base, bone = MR_SIGNAL[technique], MR_BONE[technique]
    tissue: dict[Tissue, float] = {
        t: float(v * np.exp(rng.normal(0.0, ranges.tissue_spread)))
        for t, v in base.items()
        if t not in (Tissue.AIR, Tissue.AIR_INTERNAL)
    }
    tissue[Tissue.SOFT] = 1.0
    mucus, blood = FLUID_SIGNAL[technique]
    tissue[Tissue.MUCUS] = float(mucus * np.exp(rng.normal(0.0, ranges.tissue_spread)))
    tissue[Tissue.BLOOD] = float(blood * np.exp(rng.normal(0.0, 2 * ranges.tissue_spread)))
    tissue[Tissue.METAL] = 0.0
    curves = []
    for kind in (Tissue.CORTICAL, Tissue.CANCELLOUS):
        a, b = bone[kind]
        at_zero = a * float(np.exp(rng.normal(0.0, 0.08)))
        # how dark the densest bone is against the least dense: vendors, echo times and
        # reconstructions differ most in this; drawn over a range, or the technique's own
        if ranges.bone_ratio is not None:
            ratio = _uniform(rng, ranges.bone_ratio)
        else:
            ratio = float(np.clip((a - b) / a * np.exp(rng.normal(0.0, 0.15)), 0.05, 0.9))
        curves.append(BoneCurve(at_zero, at_zero * ratio, _uniform(rng, ranges.bone_gamma)))
    motion = bool(rng.random() < ranges.motion_probability)
    if ranges.random_contrast > 0:
        tissue, curves = _random_contrast(seed, ranges, tissue, curves)
    return MrAppearance(
        technique=technique,
        tissue=tissue,
        cortical=curves[0],
        cancellous=curves[1],
        texture=_uniform(rng, (0.02, 0.07)),
        noise_sigma=_uniform(rng, ranges.noise),
        bias_amplitude=_uniform(rng, ranges.bias),
        blooming_mm=_uniform(rng, (1.0, 4.0)),
        ringing=_uniform(rng, (0.2, 0.45)) if rng.random() < ranges.ringing_probability else 0.0,
        motion_share=_uniform(rng, (0.05, 0.25)) if motion else 0.0,
        motion_mm=_uniform(rng, (1.0, 5.0)) if motion else 0.0,
        phase_axis=int(rng.integers(1, 3)),
    )


def _random_contrast(
    seed: int,
    ranges: FamilyRanges,
    tissue: dict[Tissue, float],
    curves: list[BoneCurve],
) -> tuple[dict[Tissue, float], list[BoneCurve]]:
    """With probability ``ranges.random_contrast``, every soft tissue's signal and the bone
    curves' levels drawn from :data:`RANDOM_CONTRAST` (a stream of its own, so the patients
    rendered in their technique's contrast are those of ``wide``)."""
    rng = np.random.default_rng([seed, 17])
    if rng.random() >= ranges.random_contrast:
        return tissue, curves
    r = RANDOM_CONTRAST
    dark = (Tissue.TEETH, Tissue.METAL)
    drawn = {t: (v if t in dark else _uniform(rng, r.tissue)) for t, v in tissue.items()}
    drawn[Tissue.SOFT] = 1.0
    bone = []
    for curve, level in zip(curves, (r.cortical, r.cancellous), strict=True):
        at_zero = _uniform(rng, level)
        bone.append(BoneCurve(at_zero, at_zero * _uniform(rng, r.densest_share), curve.gamma))
    return drawn, bone


def draw_gain(seed: int, family: Family) -> float:
    """The receiver gain: log-uniform over the family's range."""
    lo, hi = FAMILIES[family].gain if family != "classic" else (600.0, 1800.0)
    return float(np.exp(np.random.default_rng([seed, 14]).uniform(np.log(lo), np.log(hi))))


def draw_acquisition(seed: int, family: Family) -> Acquisition:
    """Plane, voxel size (slice, row, column) and field of view of a ``family`` acquisition."""
    if family == "classic":
        return Acquisition()
    ranges = FAMILIES[family]
    rng = np.random.default_rng([seed, 15])
    pixel = round(_uniform(rng, ranges.pixel_mm), 2)
    pixel_other = round(pixel * _uniform(rng, (1.0, 1.15)), 2)  # not always square
    orientation = ranges.orientations[int(rng.integers(len(ranges.orientations)))]
    vertex = _uniform(rng, ranges.vertex_cut_mm) if rng.random() < 0.3 else 0.0
    neck = _uniform(rng, ranges.neck_cut_mm) if rng.random() < 0.4 else 0.0
    return Acquisition(
        orientation,
        (round(_uniform(rng, ranges.slice_mm), 2), pixel, pixel_other),
        vertex_cut_mm=vertex,
        neck_cut_mm=neck,
    )


def ranges_table() -> str:
    """The families' ranges as the Markdown table of ``src/bonect/phantom/README.md``."""

    def r(v: Range, unit: str = "") -> str:
        return f"{v[0]:g}-{v[1]:g}{unit}"

    rows: list[tuple[str, Callable[[FamilyRanges], str]]] = [
        ("techniques", lambda f: ", ".join(t.upper() for t in f.techniques)),
        ("age groups", lambda f: ", ".join(f"{k} {v:.0%}" for k, v in f.ages.items())),
        ("bone-signal curve exponent", lambda f: r(f.bone_gamma)),
        ("densest / least dense bone signal", lambda f: r(f.bone_ratio) if f.bone_ratio
         else "the technique's (PETRA 0.69), ±15 %"),
        ("tissue signal spread (log-normal std)", lambda f: f"{f.tissue_spread:g}"),
        ("pixel size", lambda f: r(f.pixel_mm, " mm")),
        ("slice thickness", lambda f: r(f.slice_mm, " mm")),
        ("planes", lambda f: ", ".join(f.orientations)),
        ("pathology (each, per patient)", lambda f: ", ".join(f.pathologies)
         + f" ({f.pathology_probability:.0%})"),
        ("head pose", lambda f: f"±{f.pose_deg:g}° about each axis, ±{f.shift_mm:g} mm"),
        ("vertex cut (30 % of patients)", lambda f: r(f.vertex_cut_mm, " mm")),
        ("neck/chin cut (40 %)", lambda f: r(f.neck_cut_mm, " mm")),
        ("noise (Rician σ / soft tissue)", lambda f: r(f.noise)),
        ("bias field amplitude", lambda f: r(f.bias)),
        ("receiver gain (log-uniform)", lambda f: r(f.gain)),
        ("Gibbs ringing / motion ghosts", lambda f: f"{f.ringing_probability:.0%} / "
         f"{f.motion_probability:.0%}"),
        ("patients in a random contrast", lambda f: f"{f.random_contrast:.0%}"),
    ]  # fmt: skip
    columns: tuple[Family, ...] = ("wide", "randomised", "shifted")
    lines = ["| | wide (training) | randomised (training) | shifted (never trained on) |",
             "|---|---|---|---|"]  # fmt: skip
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(FAMILIES[c]) for c in columns) + " |")
    r_ = RANDOM_CONTRAST
    lines += ["", "A random contrast (SynthSeg-style) draws, relative to soft tissue = 1: every "
              f"other tissue {r(r_.tissue)}, the least dense cortical bone {r(r_.cortical)}, "
              f"the least dense cancellous bone {r(r_.cancellous)}, the densest bone "
              f"{r(r_.densest_share)} of the least dense; air, teeth and metal stay dark, and "
              "the bone curve's exponent stays the family's."]  # fmt: skip
    lines += ["", "| age group | head scale | mineralisation | vault (mm) | open sutures "
              "| sinus scale | mastoid cells | jaw scale | missing teeth |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for group, a in AGE_GROUPS.items():
        lines.append(
            f"| {group} | {r(a.scale)} | {r(a.mineralisation)} | {r(a.vault_mm)} "
            f"| {a.sutures_open:.0%} | {r(a.sinus)} | {a.mastoid_cells[0]}-{a.mastoid_cells[1]} "
            f"| {r(a.jaw)} | {a.missing_teeth[0]}-{a.missing_teeth[1]} |"
        )
    return "\n".join(lines)
