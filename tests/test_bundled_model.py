"""The bundled phantom-trained Light_U-Net: what it claims to be, and that it earns its place."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bonect.cohort_quality import QUALITY_SEED
from bonect.converter.model_folder import load_model
from bonect.converter.networks import count_parameters
from bonect.converter.pipeline import Classical, convert, resolve_method
from bonect.demo import bundled_model
from bonect.metrics_report import compute_metrics
from bonect.phantom.generate import Acquisition, generate_case, patient_seed
from bonect.phantom.variation import draw_acquisition


def test_bundled_model_is_a_labelled_light_unet_under_10_mb() -> None:
    folder = bundled_model()
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size <= 10 * 1024 * 1024
    model = load_model(folder)
    assert model.manifest.architecture == "light_unet"
    assert model.manifest.clinical_use is False
    assert "NOT FOR CLINICAL USE" in model.manifest.description
    assert model.manifest.training.sites == ("phantom",)
    assert count_parameters(model.network) == 2_159_889


def test_auto_never_picks_the_bundled_model(tmp_path: Path) -> None:
    method = resolve_method("auto", registry=tmp_path / "models", device=torch.device("cpu"))
    assert isinstance(method, Classical)


@pytest.fixture(scope="module")
def held_out_case():  # type: ignore[no-untyped-def]
    # cohort 19 was never seen in training (cohort 2024); patient 1 is a child
    return generate_case(
        19, 1, acquisition=Acquisition("axial", (2.5, 2.0, 2.0)), ct_acquisition=None
    )


def test_unet_beats_the_classical_map_on_a_held_out_child(held_out_case) -> None:  # type: ignore[no-untyped-def]
    case = held_out_case
    body = case.labels.array > 0
    model = load_model(bundled_model())
    unet = convert(case.mr, model, planes=("axial",), device=torch.device("cpu")).sct
    classical = convert(case.mr, Classical()).sct
    m_unet = compute_metrics(unet.array, case.ct_on_mr.array, mask=body, body_mask=body)
    m_classical = compute_metrics(classical.array, case.ct_on_mr.array, mask=body, body_mask=body)
    assert m_unet.mae < m_classical.mae, (m_unet, m_classical)
    assert m_unet.bone_dice > m_classical.bone_dice, (m_unet, m_classical)
    assert np.isfinite(unet.array).all()


def test_unet_beats_the_classical_map_on_a_shifted_patient_it_never_saw_the_like_of() -> None:
    # the shifted family: a PETRA contrast, a bone curve and pathology the model never trained
    # on (src/bonect/phantom/README.md); the acquisition made coarser to keep the test short
    pseed = patient_seed(QUALITY_SEED, 5)
    acquisition = replace(draw_acquisition(pseed, "shifted"), spacing=(3.0, 1.6, 1.6))
    case = generate_case(
        QUALITY_SEED, 5, acquisition=acquisition, ct_acquisition=None, family="shifted"
    )
    assert case.contrast == "petra"
    body = case.labels.array > 0
    model = load_model(bundled_model())
    unet = convert(case.mr, model, device=torch.device("cpu")).sct
    classical = convert(case.mr, Classical()).sct
    m_unet = compute_metrics(unet.array, case.ct_on_mr.array, mask=body, body_mask=body)
    m_classical = compute_metrics(classical.array, case.ct_on_mr.array, mask=body, body_mask=body)
    assert m_unet.mae_body < 0.75 * m_classical.mae_body, (m_unet, m_classical)
    assert m_unet.bone_dice > m_classical.bone_dice, (m_unet, m_classical)


def test_bfloat16_scores_the_held_out_child_as_float32_does(held_out_case) -> None:  # type: ignore[no-untyped-def]
    """``[converter] precision``: on a CPU ``auto`` may compute in bfloat16 (2-3x faster here);
    the sCT must stay what float32 gives, to well under the differences between methods."""
    case = held_out_case
    body = case.labels.array > 0
    ct = case.ct_on_mr.array
    scts = {
        precision: convert(
            case.mr,
            load_model(bundled_model(), precision=precision),  # type: ignore[arg-type]
            planes=("axial",),
            device=torch.device("cpu"),
        ).sct.array
        for precision in ("float32", "bfloat16")
    }
    difference = np.abs(scts["bfloat16"] - scts["float32"])[body]
    assert difference.mean() < 2.0, difference.mean()  # HU
    assert np.percentile(difference, 99.9) < 60.0, np.percentile(difference, 99.9)
    mae = {p: compute_metrics(s, ct, mask=body, body_mask=body).mae for p, s in scts.items()}
    assert abs(mae["bfloat16"] - mae["float32"]) < 1.0, mae
