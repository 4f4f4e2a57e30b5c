"""The Prefect UI in a real browser: Debian's Chromium, driven by playwright, shows the completed
deployment run with its dataset summary, the deployment with that run, and a cluster report whose
maps render inside the artifact and whose links open.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from conftest import DeploymentRun, ProcessPoolDeployments
from penultimate.stages import DATASET_STAGE
from penultimate.ui import FILES_URL_ENV

CHROMIUM = Path("/usr/bin/chromium")
# No network beyond the local server: nothing for Chromium to phone home to or update.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The SPA fetches from the API after load; on a loaded machine the first render can take a while.
RENDER_TIMEOUT_MS = 60_000


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with a fresh profile (playwright's own browsers are never used)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


def _open(browser: BrowserContext, url: str) -> Page:
    page = browser.new_page()
    page.set_default_timeout(RENDER_TIMEOUT_MS)
    page.goto(url)
    return page


def test_the_ui_shows_the_deployment_run_and_its_dataset_summary(
    browser: BrowserContext,
    process_pool_deployments: ProcessPoolDeployments,
    ingest_deployment_run: DeploymentRun,
    tmp_path: Path,
) -> None:
    run = ingest_deployment_run.flow_run
    (manifest_path,) = (ingest_deployment_run.store_root / DATASET_STAGE.name).glob(
        "*/manifest.json"
    )
    manifest = json.loads(manifest_path.read_text())

    page = _open(browser, f"{process_pool_deployments.ui_url}/runs/flow-run/{run['id']}")
    expect(page.get_by_text(run["name"], exact=True).first).to_be_visible()
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    page.screenshot(path=tmp_path / "flow_run.png", full_page=True)

    page.get_by_text("Artifacts", exact=True).first.click()
    card = page.get_by_text("dataset-summary", exact=True).last
    expect(card).to_be_visible()
    page.screenshot(path=tmp_path / "flow_run_artifacts.png", full_page=True)

    # The artifact's own page renders its markdown: the dataset's key and row count.
    card.click()
    expect(page.get_by_text(manifest["key"]).first).to_be_visible()
    expect(page.get_by_text(f"rows: {manifest['metrics']['rows']}").first).to_be_visible()
    page.screenshot(path=tmp_path / "dataset_summary.png", full_page=True)


def test_the_ui_shows_the_deployment_with_its_run(
    browser: BrowserContext,
    process_pool_deployments: ProcessPoolDeployments,
    ingest_deployment_run: DeploymentRun,
    tmp_path: Path,
) -> None:
    deployment_id = process_pool_deployments.deployment_ids["ingest"]
    page = _open(
        browser, f"{process_pool_deployments.ui_url}/deployments/deployment/{deployment_id}"
    )
    expect(
        page.get_by_text(ingest_deployment_run.flow_run["name"], exact=True).first
    ).to_be_visible()
    expect(page.get_by_text("penultimate-process", exact=True).first).to_be_visible()
    expect(page.get_by_text("flows/ingest.py:ingest", exact=True).first).to_be_visible()
    page.screenshot(path=tmp_path / "deployment.png", full_page=True)


@pytest.fixture
def served_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A store served over HTTP as `penultimate serve` does, with the artifacts' links at it."""
    import functools
    import http.server
    import threading

    root = tmp_path / "store"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(FILES_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield root
    finally:
        server.shutdown()


def test_the_cluster_report_shows_its_maps_and_its_links_open(
    browser: BrowserContext, prefect_api: str, served_store: Path, tmp_path: Path
) -> None:
    from test_cluster import embeddings_artifact, topic_shards

    from flows.cluster import cluster
    from penultimate.config import ClusterConfig

    embeddings = embeddings_artifact(served_store, topic_shards(40, 2))
    state = cluster(
        config=ClusterConfig(k=3), embeddings=embeddings, store_root=str(served_store),
        return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id

    page = _open(browser, f"{prefect_api.removesuffix('/api')}/runs/flow-run/{run_id}")
    # The run's own page first: before it renders, the first "Artifacts" is the sidebar's link.
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("cluster-report", exact=True).last.click()
    # The maps are inside the artifact (data URIs), drawn by the browser: a real width.
    image = page.locator("img[alt='map_by_label.png']").first
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") > 500
    page.screenshot(path=tmp_path / "cluster_report.png", full_page=True)
    # The interactive map's link is served over HTTP (a browser refuses file://) and opens.
    href = page.get_by_role("link", name="interactive map").first.get_attribute("href")
    assert href is not None and href.startswith("http://127.0.0.1:")
    map_page = browser.new_page()
    response = map_page.goto(href)
    assert response is not None and response.status == 200
    expect(map_page.get_by_text("colour by label")).to_be_visible()
    map_page.screenshot(path=tmp_path / "map.png")
