"""Deployments with real processes: `prefect deploy --all` against the session's Prefect server, a
`process` worker running deployment runs, a schedule, validated parameters, the docker variant.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import (
    PROCESS_POOL,
    REPO,
    DeploymentRun,
    ProcessPoolDeployments,
    ingest_parameters,
    prefect_api_call,
    prefect_cli,
    wait_for_flow_run,
)
from penultimate.config import ClusterAlgorithm, DropoutSpec, FileFormat, MaskMode, TextFormat
from penultimate.stages import DATASET_STAGE

DOCKER_FILE = REPO / "prefect.docker.yaml"


def _project_deployments(path: Path) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in yaml.safe_load(path.read_text())["deployments"]}


def _deployment(api_url: str, deployment_id: str) -> dict[str, Any]:
    return prefect_api_call(api_url, "GET", f"/deployments/{deployment_id}")


def _dataset_manifest(store_root: Path) -> dict[str, Any]:
    manifests = sorted((store_root / DATASET_STAGE.name).glob("*/manifest.json"))
    assert len(manifests) == 1, f"expected one dataset artifact in {store_root}, found {manifests}"
    return json.loads(manifests[0].read_text())


def test_deploy_all_puts_every_deployment_on_the_process_pool(
    process_pool_deployments: ProcessPoolDeployments,
) -> None:
    api_url = process_pool_deployments.api_url
    declared = _project_deployments(REPO / "prefect.yaml")
    assert set(process_pool_deployments.deployment_ids) == set(declared)
    for name, deployment_id in process_pool_deployments.deployment_ids.items():
        deployment = _deployment(api_url, deployment_id)
        assert deployment["work_pool_name"] == PROCESS_POOL, name
        assert deployment["entrypoint"] == declared[name]["entrypoint"], name
        # The worker's flow-run processes start in this checkout.
        assert deployment["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ], name
        assert deployment["parameters"] == declared[name].get("parameters", {}), name
    nightly = _deployment(api_url, process_pool_deployments.deployment_ids["pipeline-nightly"])
    assert [schedule["schedule"]["cron"] for schedule in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["schedules"][0]["schedule"]["timezone"] == "UTC"


def test_parameters_are_validated_forms_with_enums_and_bounds(
    process_pool_deployments: ProcessPoolDeployments,
) -> None:
    api_url = process_pool_deployments.api_url
    ids = process_pool_deployments.deployment_ids
    ingest = _deployment(api_url, ids["ingest"])["parameter_openapi_schema"]
    definitions = ingest["definitions"]
    assert definitions["FileFormat"]["enum"] == [member.value for member in FileFormat]
    assert definitions["TextFormat"]["enum"] == [member.value for member in TextFormat]
    assert definitions["IngestConfig"]["properties"]["shard_rows"]["minimum"] == 1
    assert definitions["IngestConfig"]["required"] == ["source"]
    assert definitions["SplitRatios"]["properties"]["train"]["maximum"] == 1

    pipeline = _deployment(api_url, ids["pipeline-nightly"])["parameter_openapi_schema"]
    definitions = pipeline["definitions"]
    assert definitions["MaskMode"]["enum"] == [member.value for member in MaskMode]
    assert definitions["ClusterAlgorithm"]["enum"] == [member.value for member in ClusterAlgorithm]
    rate = definitions["DropoutSpec"]["properties"]["rate"]
    assert (rate["minimum"], rate["exclusiveMaximum"]) == (0, 1)
    assert rate["description"] == DropoutSpec.model_fields["rate"].description
    # A placement or freeze is a choice from a list, or a text box for `hidden:i` / `top:N`.
    at = definitions["DropoutSpec"]["properties"]["at"]["anyOf"]
    assert (set(at[0]["enum"]), at[1]["pattern"]) == (
        {"head", "pooled", "sequence"},
        r"^hidden:\d+$",
    )
    freeze = definitions["TrainConfig"]["properties"]["freeze"]["anyOf"]
    assert (freeze[0]["enum"], freeze[1]["title"]) == (["all", "none"], "top:N")


def test_every_quick_run_is_accepted_and_artifact_inputs_are_one_text_box(
    process_pool_deployments: ProcessPoolDeployments,
) -> None:
    declared = _project_deployments(REPO / "prefect.yaml")
    for name, deployment_id in process_pool_deployments.deployment_ids.items():
        schema = _deployment(process_pool_deployments.api_url, deployment_id)[
            "parameter_openapi_schema"
        ]
        # Quick run sends the deployment's own parameters: they must cover every required one.
        assert set(schema.get("required", [])) <= set(declared[name].get("parameters", {})), name
    inputs = {"train": ["dataset"], "export": ["classifier", "dataset"], "embed": ["dataset"],
              "cluster": ["embeddings"]}  # fmt: skip
    for name, parameters in inputs.items():
        deployment_id = process_pool_deployments.deployment_ids[name]
        deployment = _deployment(process_pool_deployments.api_url, deployment_id)
        schema = deployment["parameter_openapi_schema"]
        for parameter in parameters:
            artifact, none = schema["properties"][parameter]["anyOf"]
            definition = schema["definitions"][artifact["$ref"].rsplit("/", 1)[-1]]
            assert (definition["type"], none["type"]) == ("string", "null"), (name, parameter)
            assert "properties" not in definition, (name, parameter)
        assert "newest" in deployment["description"], name


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"shard_rows": 0}, "config.shard_rows", "less than the minimum of 1"),
        ({"format": "xlsx"}, "config.format", "'xlsx' is not one of"),
        ({"shard_row": 10}, "config", "Additional properties are not allowed"),
    ],
)
def test_the_api_rejects_a_run_with_bad_parameters_naming_the_field(
    process_pool_deployments: ProcessPoolDeployments,
    corpus_slice: Path,
    tmp_path: Path,
    change: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    parameters = ingest_parameters(corpus_slice, tmp_path, 100)
    parameters["config"].update(change)
    deployment_id = process_pool_deployments.deployment_ids["ingest"]
    with pytest.raises(httpx.HTTPStatusError) as raised:
        prefect_api_call(
            process_pool_deployments.api_url,
            "POST",
            f"/deployments/{deployment_id}/create_flow_run",
            {"parameters": parameters},
        )
    detail = raised.value.response.json()["detail"]
    assert f"field '{field}'" in detail
    assert reason in detail


def test_a_deployment_run_with_custom_parameters_completes_with_its_artifacts(
    ingest_deployment_run: DeploymentRun,
    process_pool_deployments: ProcessPoolDeployments,
    corpus_slice: Path,
) -> None:
    run = ingest_deployment_run.flow_run
    assert run["state_type"] == "COMPLETED", process_pool_deployments.worker_log.read_text()[-3000:]
    assert run["deployment_id"] == process_pool_deployments.deployment_ids["ingest"]
    assert run["parameters"] == ingest_deployment_run.parameters
    assert not run["auto_scheduled"]

    manifest = _dataset_manifest(ingest_deployment_run.store_root)
    assert manifest["config"]["config"]["shard_rows"] == 70
    assert manifest["config"]["config"]["source"] == str(corpus_slice)
    metrics = manifest["metrics"]
    assert metrics["rows"] + sum(metrics["dropped"].values()) == 300
    assert len(metrics["shards"]) == math.ceil(metrics["rows"] / 70)

    artifacts = prefect_api_call(
        process_pool_deployments.api_url,
        "POST",
        "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}},
    )
    summary = {artifact["key"]: artifact for artifact in artifacts}["dataset-summary"]
    assert summary["type"] == "markdown"
    assert manifest["key"] in summary["data"]
    assert f"rows: {metrics['rows']}" in summary["data"]


def test_an_interval_schedule_creates_a_run_that_completes(
    process_pool_deployments: ProcessPoolDeployments, corpus_slice: Path, tmp_path: Path
) -> None:
    api_url = process_pool_deployments.api_url
    parameters = ingest_parameters(corpus_slice, tmp_path / "store", 150)
    prefect_cli(
        "deploy",
        "flows/ingest.py:ingest",
        "--name",
        "ingest-every-10s",
        "--pool",
        PROCESS_POOL,
        "--interval",
        "10",
        "--params",
        json.dumps(parameters),
    )
    deployment = prefect_api_call(api_url, "GET", "/deployments/name/ingest/ingest-every-10s")
    assert [s["schedule"]["interval"] for s in deployment["schedules"]] == [10.0]
    runs_of_deployment = {
        "flow_runs": {"deployment_id": {"any_": [deployment["id"]]}},
        "sort": "EXPECTED_START_TIME_ASC",
    }
    deadline = time.monotonic() + 120
    while True:
        runs = prefect_api_call(api_url, "POST", "/flow_runs/filter", runs_of_deployment)
        started = [run for run in runs if run["state_type"] != "SCHEDULED"]
        if started:
            break
        assert time.monotonic() < deadline, f"no scheduled run started; runs: {runs}"
        time.sleep(1)
    # One run is the proof; pausing deletes the runs still waiting, so no more start.
    prefect_api_call(api_url, "POST", f"/deployments/{deployment['id']}/pause_deployment")

    first = wait_for_flow_run(api_url, started[0]["id"])
    assert first["auto_scheduled"], "the run was not created by the scheduler"
    assert first["state_type"] == "COMPLETED"
    assert first["parameters"] == parameters
    assert _dataset_manifest(tmp_path / "store")["config"]["config"]["shard_rows"] == 150
    # Runs the worker had taken before the pause end too, so nothing outlives the test.
    for run in prefect_api_call(api_url, "POST", "/flow_runs/filter", runs_of_deployment):
        assert wait_for_flow_run(api_url, run["id"])["state_type"] == "COMPLETED"


def test_the_docker_variant_declares_the_same_deployments_on_a_docker_pool() -> None:
    process_file = _project_deployments(REPO / "prefect.yaml")
    docker_file = _project_deployments(DOCKER_FILE)
    assert set(docker_file) == {f"{name}-docker" for name in process_file}
    pool = yaml.safe_load(DOCKER_FILE.read_text())["definitions"]["work_pools"]["docker"]
    for name, process in process_file.items():
        docker = docker_file[f"{name}-docker"]
        assert docker["work_pool"] == pool, name
        for same in ("entrypoint", "description", "parameters", "schedules"):
            assert docker.get(same) == process.get(same), f"{name}-docker differs in {same}"


def test_the_docker_variant_deploys_onto_a_docker_pool(
    process_pool_deployments: ProcessPoolDeployments,
) -> None:
    # One deployment of the file, not --all: each deploy imports its flows (TensorFlow included,
    # ~25 s), and the declarations are compared one by one in the test above.
    api_url = process_pool_deployments.api_url
    pool = yaml.safe_load(DOCKER_FILE.read_text())["definitions"]["work_pools"]["docker"]
    prefect_cli("work-pool", "create", pool["name"], "--type", "docker")
    prefect_cli("deploy", "--name", "ingest-docker", "--prefect-file", DOCKER_FILE.name)

    docker = prefect_api_call(api_url, "GET", "/deployments/name/ingest/ingest-docker")
    process = _deployment(api_url, process_pool_deployments.deployment_ids["ingest"])
    assert docker["work_pool_name"] == pool["name"]
    for same in ("flow_id", "entrypoint", "description", "parameters", "parameter_openapi_schema"):
        assert docker[same] == process[same], f"ingest-docker differs in {same}"
    # Flow-run containers start in the image's checkout, with the image built by the Dockerfile.
    assert docker["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}
    ]
    variables = docker["job_variables"]
    assert variables["image"] == pool["job_variables"]["image"]
    assert variables["image_pull_policy"] == "Never"
    assert f"{REPO}/.cache/demo:/app/.cache/demo:ro" in variables["volumes"]
    assert "penultimate-artifacts:/app/artifacts" in variables["volumes"]
