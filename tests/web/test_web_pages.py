"""The status page through Starlette's TestClient: pages, pictures, logins, actions, no PHI."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from bonect.catalog.peer_checks import record_check
from bonect.config import Config, Destination, SourceConfig
from bonect.demo import bundled_model
from bonect.registry import promoted_name, read_manifest
from bonect.web.app import build_app
from catalog.catalog_support import START, record_priors
from web.conftest import (
    BCRYPT_PASSWORD,
    BCRYPT_USER,
    PASSWORD,
    PATIENT_ID,
    PATIENT_NAME,
    USER,
    WebSite,
)

LOOPBACK = ("127.0.0.1", 50123)
INSIDE = ("10.1.2.3", 50123)  # in the allow-list of the exposed config
OUTSIDE = ("192.168.7.9", 50123)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@contextmanager
def client(
    config: Config, site: WebSite, address: tuple[str, int] = LOOPBACK
) -> Iterator[TestClient]:
    app = build_app(config, site.catalog)
    with TestClient(app, base_url="http://127.0.0.1:8080", client=address) as c:
        yield c


def exposed(site: WebSite, **web: object) -> Config:
    return site.config(
        host="0.0.0.0",
        allowed_hosts=["10.0.0.0/8"],
        password_file=site.password_file,
        **web,
    )


def pages(site: WebSite) -> list[str]:
    return [
        "/",
        f"/jobs/{site.done_job}",
        f"/jobs/{site.failed_job}",
        "/models",
        "/destinations",
    ]


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)


def test_every_page_renders_on_loopback_without_login(site: WebSite) -> None:
    with client(site.config(), site) as c:
        for path in pages(site):
            response = c.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["x-frame-options"] == "DENY"
            assert "default-src 'none'" in response.headers["content-security-policy"]
        queue = c.get("/").text
        assert f'data-job="{site.done_job}" data-state="done"' in queue
        assert f'data-job="{site.failed_job}" data-state="failed"' in queue
        assert site.failed_reason in queue
        assert '<meta http-equiv="refresh" content="10">' in queue
        assert "pacs: " in queue and "stored" in queue
        assert "convert 2.50 s" in queue  # the worker's own stage timings
        assert site.failed_reason in c.get(f"/jobs/{site.failed_job}").text
        assert c.get("/style.css").headers["content-type"].startswith("text/css")
        assert c.get("/jobs/999").status_code == 404


def test_a_done_job_shows_mr_sct_and_uncertainty_in_three_planes(site: WebSite) -> None:
    with client(site.config(), site) as c:
        page = c.get(f"/jobs/{site.done_job}").text
        assert "of the head's voxels have planes that disagree" in page
        for kind in ("mr", "sct", "uncertainty"):
            for plane in ("axial", "coronal", "sagittal"):
                url = f"/jobs/{site.done_job}/{kind}/{plane}.png"
                assert f'src="{url}"' in page
                response = c.get(url)
                assert response.status_code == 200, url
                assert response.headers["content-type"] == "image/png"
                pixels = png_pixels(response.content)
                assert pixels.var() > 0, url
                assert max(pixels.shape) == 192
        assert c.get(f"/jobs/{site.failed_job}/mr/axial.png").status_code == 404
        assert c.get(f"/jobs/{site.done_job}/ct/axial.png").status_code == 404


def test_without_an_uncertainty_map_the_page_says_not_recorded(site: WebSite) -> None:
    job = site.catalog.job(site.done_job)
    assert job is not None and job.output_dir is not None
    (job.output_dir / "uncertainty.nii.gz").unlink()
    with client(site.config(), site) as c:
        page = c.get(f"/jobs/{site.done_job}").text
        assert "Uncertainty: not recorded" in page
        assert "/uncertainty/" not in page


def test_the_models_page_shows_the_promoted_manifest_versions_and_decisions(
    site: WebSite,
) -> None:
    with client(site.config(), site) as c:
        page = c.get("/models").text
    bundled = read_manifest(bundled_model())
    assert f'id="model-in-use">phantom-light-unet {bundled.version}<' in page
    assert "light_unet" in page and "128 × 128" in page
    patients = len(bundled.training.patient_keys)
    assert "NOT FOR CLINICAL USE" in page and f"sites phantom; {patients} patients" in page
    assert f"validation_l1_hu {bundled.metrics['validation_l1_hu']:.4g}" in page
    assert "promoted: it is better" in page  # the decision of the report
    assert "external + local (CV)" in page and "99.0 [90.0, 108.0]" in page
    assert "old-light-unet" in page and "first" in page  # the older version, its promotion
    assert "<form" not in page  # read-only by default


def test_no_patient_name_or_id_in_any_page_by_default(site: WebSite) -> None:
    secrets = [PATIENT_ID, *PATIENT_NAME.split("^")]
    with client(site.config(), site) as c:
        for path in pages(site):
            text = c.get(path).text
            for secret in secrets:
                assert secret not in text, (path, secret)
            assert secrets[0].lower() not in text.lower()
    with client(site.config(show_phi=True), site) as c:  # the test can see them when shown
        page = c.get(f"/jobs/{site.done_job}").text
        assert PATIENT_ID in page and PATIENT_NAME in page


def test_beyond_loopback_a_request_without_credentials_is_refused(site: WebSite) -> None:
    with client(exposed(site), site, INSIDE) as c:
        refused = c.get("/")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert c.get("/", auth=(USER, "wrong")).status_code == 401
        assert c.get("/", auth=("nobody", PASSWORD)).status_code == 401
        for path in pages(site):
            assert c.get(path).status_code == 401, path
            assert c.get(path, auth=(USER, PASSWORD)).status_code == 200, path
        assert c.get("/models", auth=(BCRYPT_USER, BCRYPT_PASSWORD)).status_code == 200
        png = c.get(f"/jobs/{site.done_job}/sct/axial.png", auth=(USER, PASSWORD))
        assert png.status_code == 200 and png_pixels(png.content).var() > 0
    with client(exposed(site), site, OUTSIDE) as c:  # off the allow-list: even with a login
        assert c.get("/", auth=(USER, PASSWORD)).status_code == 403
    with client(exposed(site), site, LOOPBACK) as c:  # a login file applies to loopback too
        assert c.get("/").status_code == 401


def test_on_loopback_without_logins_a_foreign_host_name_is_refused(site: WebSite) -> None:
    with client(site.config(), site) as c:
        assert c.get("/", headers={"host": "attacker.example"}).status_code == 421
        assert c.get("/", headers={"host": "localhost:8080"}).status_code == 200
    with client(site.config(), site, INSIDE) as c:
        assert c.get("/").status_code == 403


def _csrf(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


def test_actions_are_refused_when_actions_is_false(site: WebSite) -> None:
    models = site.storage / "models"
    with client(exposed(site), site, INSIDE) as c:
        page = c.get("/models", auth=(USER, PASSWORD)).text
        assert "<form" not in page
        for action, form in (("promote", {"version": "old-light-unet"}), ("rollback", {})):
            response = c.post(f"/models/{action}", data=form, auth=(USER, PASSWORD))
            assert response.status_code == 403, action
    assert promoted_name(models) == "phantom-light-unet"


def test_actions_need_a_login_and_the_form_token(site: WebSite) -> None:
    models = site.storage / "models"
    with client(exposed(site, actions=True), site, INSIDE) as c:
        auth = (USER, PASSWORD)
        assert c.post("/models/rollback").status_code == 401
        assert c.post("/models/rollback", auth=auth, data={"csrf": "forged"}).status_code == 403
        token = _csrf(c.get("/models", auth=auth).text)
        response = c.post(
            "/models/rollback", auth=auth, data={"csrf": token}, follow_redirects=False
        )
        assert response.status_code == 303
        assert promoted_name(models) == "old-light-unet"
        promote = {"csrf": token, "version": "../../etc"}
        assert c.post("/models/promote", auth=auth, data=promote).status_code == 404
        promote["version"] = "phantom-light-unet"
        assert c.post("/models/promote", auth=auth, data=promote).status_code == 200
        assert promoted_name(models) == "phantom-light-unet"
        other = _csrf(c.get("/models", auth=(BCRYPT_USER, BCRYPT_PASSWORD)).text)
        assert other != token  # a token is bound to its user
    assert "by physicist" in (models / "promotions.log").read_text()


def test_the_destinations_page_shows_backlog_disk_and_catalog(site: WebSite) -> None:
    config = site.config()
    config = config.model_copy(
        update={
            "destinations": (
                Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242),
                Destination(name="archive", ae_title="ARCH", host="127.0.0.1", port=4243),
            )
        }
    )
    with client(config, site) as c:
        page = c.get("/destinations").text
    assert 'id="destination-pacs"' in page and 'id="destination-archive"' in page
    assert 'id="disk-free"' in page and "reserve" in page
    assert "sqlite" in page and 'id="catalog-ping"' in page
    assert "convert 2" in page  # series by role: both series are to convert


def test_the_destinations_page_shows_sources_and_prior_searches(site: WebSite) -> None:
    source = SourceConfig(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242)
    config = site.config().model_copy(update={"sources": (source,)})
    with client(config, site) as c:
        before = c.get("/destinations").text
        ids = record_priors(site.catalog, START)
        after = " ".join(c.get("/destinations").text.split())
    assert 'id="source-pacs"' in before and "searches: none yet" in before
    assert "searches: done 1, failed 1, none_found 1" in after
    assert "retrievals: retrieved 1 (6 instances)" in after
    assert f'id="prior-{ids["failed"]}" class="prior-failed"' in after
    assert "refused" in after and "no CT study" in after
    assert "<code>1.2.3.4</code> retrieved 6/6" in after


def test_the_destinations_page_shows_the_last_c_echo_of_each_peer(site: WebSite) -> None:
    source = SourceConfig(name="pacs", ae_title="PACS", host="127.0.0.1", port=4242)
    config = site.config().model_copy(
        update={
            "destinations": (Destination(name="archive", ae_title="ARCH", host="h", port=104),),
            "sources": (source,),
        }
    )
    with client(config, site) as c:
        before = c.get("/destinations").text
        record_check(site.catalog, "destination", "archive", ok=True, message="success", now=START)
        record_check(site.catalog, "source", "pacs", ok=False, message="no answer", now=START)
        after = " ".join(c.get("/destinations").text.split())
    assert before.count("not yet") == 2
    assert '<span class="ok">success</span>' in after
    assert '<span class="warn">no answer</span>' in after
