"""A digital head-and-neck phantom: paired bone-MR and CT series for demos, tests and training.

Three families (:mod:`bonect.phantom.variation`, ranges in ``README.md`` beside this file):
``classic``, described below, is one template with fixed contrasts; ``wide`` randomises
technique, tissue signals, the bone curve, artefacts, resolution, field of view, pose, age,
anatomy part by part and pathology (:mod:`bonect.phantom.pathology`), and is what the
demo-model script trains on by default; ``shifted`` draws from disjoint ranges, to test on
what was never trained on.

Why it exists: bonect must prove that its U-Net earns its place, so the phantom is built to
defeat any per-voxel intensity map. On bone MR, air, cortical bone, teeth and short-T2 soft
tissue are all dark, yet their CT numbers span -1000 to +2600 HU; only anatomy tells them apart.

The classic family in detail:

**Anatomy** (:mod:`bonect.phantom.anatomy`), analytic shapes in a head frame, per patient
scaled, rotated (±6°) and shifted (±5 mm):

- scalp (skin, subcutaneous fat) over the cranial vault; the vault has outer and inner cortical
  tables around the diploë, its thickness varying smoothly over the head;
- dura, falx and tentorium (short-T2 sheets), CSF layer and ventricles, brain;
- skull base with dense petrous ridges; mastoid processes full of air cells;
- orbits (bony walls, orbital fat, globes, optic nerves); frontal, maxillary and sphenoid sinuses
  with thin bony walls, ethmoid air cells, nasal cavity with septum, nasopharynx;
- hard palate, mandible (cortex and marrow), upper and lower teeth, oral air;
- cervical vertebrae with discs, canal, cord, laminae and spinous processes; airway;
- short-T2 soft tissue that is dark on bone MR but soft tissue on CT: nuchal and anterior
  longitudinal ligaments, sternocleidomastoid and masseter tendons, cervical and temporalis
  fascia;
- children (40 % of patients): smaller heads, thin under-mineralised bone, small sinuses, few
  mastoid cells, and in most of them open sutures and an anterior fontanelle.

**Parameters** (:class:`~bonect.phantom.anatomy.PatientParams`, drawn from the seed): paediatric
or adult, scale (0.78-1.05), bone mineralisation (0.3-1.0), vault thickness (2.5-8 mm), open
sutures, sinus size, number of mastoid cells, head pose.

**CT** (:mod:`bonect.phantom.contrast`): tissue HU (fat -95, brain 35, CSF 8, muscle 50, dense
connective tissue 85, teeth 2600); cortical bone 250 + 1550·m and cancellous bone 130 + 620·m HU
for mineralisation m; partial volume (Gaussian, 0.45 voxel) and noise (σ 12 HU).

**Bone MR**: contrast ``zte`` (proton-density-like: soft tissue 1, cortical bone 0.62 - 0.42·m,
i.e. 0.2-0.5, diploë about 0.8, short-T2 tissue 0.38, teeth 0.03, air at the noise floor),
``ute`` (brighter bone and short-T2 tissue, bright fat) and ``gre`` (black-bone gradient echo:
bone near 0.1-0.2, fat bright, CSF dark); a few per cent of tissue texture; partial volume; a
smooth multiplicative bias field of about ±20 %; Rician noise (σ 0.035 of soft tissue); an
arbitrary receiver gain.

**Pairing**: the CT comes from another session (its own frame of reference, pose differing by
up to 4° and 8 mm, axial 1.0 × 1.0 × 1.5 mm); ``ct_on_mr`` is the CT as a good registration
leaves it on the MR grid, with a residual misregistration under 0.8° and 0.8 mm.

**Acquisition** (:class:`~bonect.phantom.generate.Acquisition`): axial, sagittal or coronal
slices over a 224 × 228 × 268 mm field of view, anisotropic voxels (default 2.0 mm slices,
1.5 mm pixels).
"""

from bonect.phantom.contrast import CONTRASTS, Contrast
from bonect.phantom.generate import (
    ORIENTATIONS,
    Acquisition,
    Orientation,
    PhantomCase,
    generate_case,
)

__all__ = [
    "CONTRASTS",
    "ORIENTATIONS",
    "Acquisition",
    "Contrast",
    "Orientation",
    "PhantomCase",
    "generate_case",
]
