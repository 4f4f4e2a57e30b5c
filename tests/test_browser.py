"""The Prefect UI in a real browser: Debian's Chromium, driven by playwright, shows the completed
deployment run with its dataset summary, and the deployment with that run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from conftest import DeploymentRun, ProcessPoolDeployments
from penultimate.stages import DATASET_STAGE

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
