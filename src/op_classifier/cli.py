"""The `op-classifier` command: compose the config, make the sample, run a stage ad hoc, predict images."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from op_classifier import choices, config, defaults, quiet
from op_classifier.audit import corrections
from op_classifier.data import raw
from op_classifier.errors import ConfigError, OpClassifierError
from op_classifier.runner import guarded, report, stop_with_parent

# Stage name -> module with `run(cfg) -> dict`; imported only when asked for (TensorFlow is slow).
STAGES = {
    "prepare": "op_classifier.stages.prepare",
    "tune": "op_classifier.stages.tune",
    "train": "op_classifier.stages.train",
    "evaluate": "op_classifier.stages.evaluate",
    "audit": "op_classifier.stages.audit",
}


VERBOSE_HELP = f"show TensorFlow's start-up log lines, hidden by default (DVC stages: set {quiet.VERBOSE_ENV}=1)"


def _sample(args: argparse.Namespace) -> None:
    from op_classifier.data import sample

    given = {"per_class": args.per_class, "scenes": args.scenes, "seed": args.seed}
    report(sample.generate(Path(args.out), **{k: v for k, v in given.items() if v is not None}))


def _stage(
    name: str, overrides: Sequence[str], workers: int | None = None, processes: int = 1, verbose: bool = False
) -> None:
    cfg = config.validate(config.compose(tuple(overrides)))
    if workers is not None:  # the chief and each worker compose the same config themselves
        from op_classifier.data.prepared import load_manifest
        from op_classifier.training import tuner_cluster

        if cfg.tuner.kind == "none":
            raise ConfigError("--workers: tuner.kind is none, there is no search to distribute")
        load_manifest(Path(cfg.paths.prepared), cfg.data.image_size)  # once here, not in every worker
        report(tuner_cluster.launch(workers, overrides))
        return
    if processes > 1:  # this command again, once per process, joined on 127.0.0.1 (distributed.py)
        import os

        os.environ["KERAS_BACKEND"] = "jax"  # the engine's backend: this launcher then loads no TensorFlow
        from op_classifier.training import distributed

        distributed.check_batch(cfg.train.batch_size, processes)
        distributed.launch(["-m", "op_classifier.cli", name, *overrides], processes, verbose=verbose)
        return
    module = importlib.import_module(STAGES[name])
    report(module.run(cfg))


def _predict(args: argparse.Namespace) -> None:
    from op_classifier.serving import predict

    predict.run(
        args.paths,
        model=args.model,
        threshold=args.threshold,
        as_json=args.json,
        report=args.report,
        batch_size=args.batch_size,
    )


def _weights(args: argparse.Namespace) -> None:
    from op_classifier.weights import imagenet

    cfg = config.validate(config.compose((f"model={args.model}",)))
    model = cfg.model
    if model.name != "efficientnet_lite":
        raise ConfigError(
            f"--model {args.model}: only EfficientNet-Lite checkpoints convert (efficientnet_lite0, 1 or 2)"
        )
    out = Path(args.out)
    if not out.name.endswith(".weights.h5"):
        raise ConfigError(f"--out {out}: a Keras weights file's name ends in .weights.h5")
    from op_classifier.models.efficientnet_lite import backbone

    what = f"{args.model} (width {model.width:g}, depth {model.depth:g})"
    imagenet.convert(Path(args.file), lambda: backbone(32, model.width, model.depth), what, out)
    use = f"model={args.model} model.weights={out}"
    if not config.in_weights_folder(cfg.paths, out):  # the schema takes weights files from there only
        use = f"move it under {cfg.paths.weights}/ (a DVC dependency of tune and train), then model.weights=<that path>"
    report({"weights": str(out), "model": args.model, "use": use})


def _export(args: argparse.Namespace) -> None:
    import os

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":  # this process only: the converter is TensorFlow's, and so is the tracing
        print(f"note: export converts with TensorFlow: KERAS_BACKEND={backend} is set aside for it", file=sys.stderr)
        os.environ["KERAS_BACKEND"] = "tensorflow"
    from op_classifier.serving import export

    cfg = config.validate(config.compose(tuple(args.overrides)))
    report(export.run(cfg, args.model, args.quantize, Path(args.out) if args.out else None))


def _serve(args: argparse.Namespace) -> None:
    from op_classifier.serving import serve

    serve.run(
        args.model,
        host=args.host,
        port=args.port,
        max_body_mb=args.max_body_mb,
        overrides=args.overrides,
        trust_code=args.trust_code,
    )


def _ui(args: argparse.Namespace) -> None:
    import os

    from op_classifier import tracking

    cfg = config.validate(config.compose(tuple(args.overrides)))
    store = tracking.open_store(cfg.tracking)
    link = store.runs_link(cfg.tracking.experiment, f"http://{args.host}:{args.port}")
    print(f"runs of {store.uri}, compared: {link}", flush=True)
    argv, extra = store.ui_command(args.host, args.port)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"), **extra}
    try:
        os.execve(argv[0], argv, env)  # the UI is MLflow's own server: nothing of ours stays in between
    except OSError as error:
        raise OpClassifierError(f"cannot start {argv[0]}: {error.strerror or error}") from None


def _compare(args: argparse.Namespace) -> None:
    from op_classifier.compare import evaluations as compare

    cfg = config.validate(config.compose(tuple(args.overrides)))
    print(compare.run(cfg, args.a, args.b, args.split, args.json))


def _repeat(args: argparse.Namespace) -> None:
    from op_classifier.compare import repeat

    summary = repeat.run(args.overrides, args.seeds, args.jobs)
    if args.json:
        report(summary)
    else:
        print(repeat.table(summary))


def _champion(args: argparse.Namespace) -> None:
    from op_classifier import tracking

    cfg = config.validate(config.compose(tuple(args.overrides)))
    store, name = tracking.open_store(cfg.tracking), cfg.tracking.model_name
    before = store.alias_version(name, config.CHAMPION)
    if args.set is not None:
        store.set_alias(name, config.CHAMPION, args.set)
        print(f"{name}@{config.CHAMPION}: version {args.set} (was {before or 'none'}) in {store.uri}")
    elif before is None:
        raise OpClassifierError(f"no {config.CHAMPION} of model {name} in {store.uri}: run `make run` first")
    else:
        print(f"{name}@{config.CHAMPION}: version {before} in {store.uri}")


def _tracking_server(args: argparse.Namespace) -> None:
    from op_classifier.tracking import server as tracking_server

    folder = Path(args.dir)
    if args.action == "start":
        pg_bin = Path(args.pg_bin) if args.pg_bin else None
        summary = tracking_server.start(
            folder, args.host, args.port, args.workers, args.allowed_hosts, args.app_name, pg_bin
        )
    elif args.action == "stop":
        summary = tracking_server.stop(folder)
    else:
        summary = tracking_server.status(folder)
    report(summary)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="op-classifier", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    # Also after the command (`op-classifier predict x.jpg --verbose`); SUPPRESS keeps a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compose = sub.add_parser(
        "compose", parents=[common], help="save overrides in conf/project/composed.yaml, compose conf/ into params.yaml"
    )
    compose.add_argument("overrides", nargs="*", help="Hydra overrides to keep, e.g. data.val_fraction=0.25")
    compose.add_argument(
        "--reset", action="store_true", help="drop the choices saved before (then apply the overrides)"
    )

    smp = sub.add_parser("sample", parents=[common], help="render the built-in synthetic Straw Hat image set")
    smp.add_argument("--out", default=defaults.SAMPLE_OUT, help="output folder (default: %(default)s)")
    smp.add_argument("--per-class", type=int, help="single-character images per class (default: the built-in size)")
    smp.add_argument("--scenes", type=int, help="multi-character scenes (default: per-class / 2)")
    smp.add_argument("--seed", type=int, help="random seed (default: the one data.dvc was made with)")

    # predict: class probabilities of image files (src/op_classifier/serving/predict.py)
    pred = sub.add_parser(
        "predict", parents=[common], help="class probabilities of images: files, folders, quoted globs"
    )
    pred.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or glob patterns")
    pred.add_argument(
        "--model",
        help="model folder, or an MLflow URI such as models:/op-classifier@champion "
        "(default: paths.model of params.yaml, experiments/model)",
    )
    pred.add_argument(
        "--threshold",
        type=float,
        default=defaults.PREDICT_THRESHOLD,
        help="a class counts from this probability (default: %(default)s)",
    )
    pred.add_argument("--json", action="store_true", help="print one JSON document instead of one line per image")
    pred.add_argument("--report", metavar="HTML", help="also write a self-contained HTML report to this file")
    pred.add_argument(
        "--batch-size", type=int, default=defaults.PREDICT_BATCH, help="images per model call (default: %(default)s)"
    )

    cmp = sub.add_parser(
        "compare", parents=[common], help="two evaluated models on the same images: paired interval, McNemar"
    )
    cmp.add_argument("a", metavar="A", help="workspace, a DVC experiment, a run id, v3, champion or @alias")
    cmp.add_argument("b", metavar="B", help="the same kinds as A; the table reads B - A")
    cmp.add_argument("--split", choices=("val", "test"), default="test", help="which split (default: %(default)s)")
    cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cmp.add_argument("overrides", nargs="*", help="Hydra overrides (paths, tracking.uri)")

    rep = sub.add_parser("repeat", parents=[common], help="the pipeline once per seed: mean, sd and 95%% interval")
    rep.add_argument("--seeds", type=int, default=3, help="how many seeds, from `seed` on (default: %(default)s)")
    rep.add_argument("--jobs", type=int, default=1, help="seeds run at once (default: %(default)s)")
    rep.add_argument("--json", action="store_true", help="print every seed's scores and times as JSON")
    rep.add_argument("overrides", nargs="*", help="Hydra overrides for every seed, e.g. train.learning_rate=1e-3")

    exp = sub.add_parser(
        "export", parents=[common], help="a trained model as a LiteRT (.tflite) file, checked on the test split"
    )
    exp.add_argument("--format", choices=("litert",), default="litert", help="the file's kind (default: %(default)s)")
    exp.add_argument("--quantize", choices=config.QUANTIZE, help="none, float16 or int8 (default: export.quantize)")
    exp.add_argument(
        "--model",
        help="a model folder or an MLflow URI (default: models:/<tracking.model_name>@champion)",
    )
    exp.add_argument("--out", metavar="FILE.tflite", help="default: <paths.export>/model-<quantize>.tflite")
    exp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. export.calibration_images=500")

    chk = sub.add_parser(
        "check-raw", parents=[common], help="before `dvc add`: refuse a raw folder whose links lead outside it"
    )
    chk.add_argument("folder", nargs="?", default="data/raw", help="the raw images (default: %(default)s)")

    wts = sub.add_parser("weights", parents=[common], help="backbone weights: import a PyTorch checkpoint")
    wts_sub = wts.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = wts_sub.add_parser(
        "import", parents=[common], help="convert a PyTorch checkpoint (no torch needed) into a Keras .weights.h5"
    )
    imp.add_argument("file", metavar="FILE.pth", help="a state-dict checkpoint (torch.save, legacy or zip)")
    imp.add_argument("--model", required=True, help="its architecture, as a conf/model name: efficientnet_lite0|1|2")
    imp.add_argument(
        "--out", required=True, metavar="FILE.weights.h5", help="where to write (e.g. under data/weights/)"
    )

    # serve: the champion model over REST (src/op_classifier/serving/serve.py)
    ui = sub.add_parser(
        "ui", parents=[common], help="the MLflow UI over this project's store; prints the link to the runs table"
    )
    ui.add_argument("--host", default=defaults.HOST, help="interface to listen on (default: %(default)s)")
    ui.add_argument("--port", type=_port, default=defaults.UI_PORT, help="port (default: %(default)s)")
    ui.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. tracking.uri=http://host:5000")

    srv = sub.add_parser(
        "serve", parents=[common], help="serve the registered champion model over REST (TensorFlow Serving's body)"
    )
    srv.add_argument("--model", help="MLflow model URI (default: models:/<tracking.model_name>@champion)")
    srv.add_argument("--host", default=defaults.HOST, help="interface to listen on (default: %(default)s)")
    srv.add_argument(
        "--port",
        type=_port,
        default=defaults.SERVE_PORT,
        help="port (default: %(default)s, TensorFlow Serving's REST port)",
    )
    srv.add_argument(
        "--max-body-mb",
        type=float,
        default=defaults.MAX_BODY_MB,
        metavar="MIB",
        help="refuse request bodies over this many MiB with HTTP 413 (default: %(default)s, about 30 images of 180x180 as JSON)",
    )
    srv.add_argument(
        "--trust-code",
        action="store_true",
        help="also serve a Python model that is not op-classifier's: loading it runs its code (a pickle, model code)",
    )
    srv.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. tracking.uri=http://host:5000")

    chp = sub.add_parser(
        "champion", parents=[common], help="which registered version is the champion; --set VERSION moves it"
    )
    chp.add_argument("--set", metavar="VERSION", type=_version, help="make this registered version the champion")
    chp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. tracking.model_name=...")

    # tracking-server: mlflow server on PostgreSQL for a team (src/op_classifier/tracking/server.py)
    ts = sub.add_parser(
        "tracking-server",
        parents=[common],
        help="start, stop or check a team MLflow server on a PostgreSQL store of this project (.mlflow-server/)",
    )
    ts.add_argument("action", choices=("start", "stop", "status"))
    ts.add_argument(
        "--dir", default=".mlflow-server", help="its folder: database, artifacts, logs (default: %(default)s)"
    )
    ts.add_argument("--host", default=defaults.HOST, help="interface mlflow listens on (default: %(default)s)")
    ts.add_argument(
        "--port",
        type=_port,
        default=defaults.TRACKING_SERVER_PORT,
        help="mlflow's port (default: %(default)s; make ui takes the UI's)",
    )
    ts.add_argument(
        "--workers",
        type=_count,
        default=defaults.TRACKING_SERVER_WORKERS,
        help="mlflow's worker processes (default: %(default)s)",
    )
    ts.add_argument("--allowed-hosts", help="Host headers mlflow accepts, e.g. mlflow.example.com,10.0.0.7:5001")
    ts.add_argument("--app-name", choices=("basic-auth",), help="basic-auth: MLflow's users and passwords")
    ts.add_argument("--pg-bin", help="folder of initdb and postgres (default: PATH, then /usr/lib/postgresql/*/bin)")

    for name in STAGES:
        stage = sub.add_parser(
            name, parents=[common], help=f"run the {name} stage with conf/ + overrides (outside DVC)"
        )
        stage.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.epochs=3")
        if name == "audit":
            stage.add_argument("--suggest", metavar="FOLDER", help="draft corrections from the last audit into FOLDER")
        if name == "tune":
            stage.add_argument(
                "--workers",
                type=_count,
                metavar="N",
                help="a distributed search on this machine: a Keras Tuner chief and N workers (one GPU each)",
            )
    sub.choices["train"].add_argument(
        "--processes",
        type=_count,
        default=1,
        metavar="N",
        help="data-parallel training in N local processes on JAX (train.batch_size is split across them)",
    )
    return parser


def _count(text: str) -> int:
    """A count of workers or processes: a whole number, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, at least 1, not {text!r}")
    return int(text)


def _port(text: str) -> int:
    """A TCP port: a whole number from 1 to 65535 (a larger one was an OverflowError traceback)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1 to 65535, not {text!r}")
    return int(text)


def _version(text: str) -> str:
    """A registered model version: a whole number, at least 1."""
    return str(_count(text))


def _stop_with_repeat() -> None:
    """A stage `repeat` started stops once repeat is gone, as a DVC stage does with `dvc repro`."""
    import os

    from op_classifier.compare.repeat import STAGE_ENV

    if os.environ.get(STAGE_ENV) == "1":
        stop_with_parent()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the command."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        quiet.configure(verbose=True)  # before any command loads TensorFlow
    if args.command == "compose":
        code = guarded(lambda: print(choices.compose(args.overrides, args.reset)))
    elif args.command == "sample":
        code = guarded(lambda: _sample(args))
    elif args.command == "serve":
        code = guarded(lambda: _serve(args))
    elif args.command == "ui":
        code = guarded(lambda: _ui(args))
    elif args.command == "champion":
        code = guarded(lambda: _champion(args))
    elif args.command == "tracking-server":
        code = guarded(lambda: _tracking_server(args))
    elif args.command == "predict":
        code = guarded(lambda: _predict(args))
    elif args.command == "export":
        code = guarded(lambda: _export(args))
    elif args.command == "compare":
        code = guarded(lambda: _compare(args))
    elif args.command == "repeat":
        code = guarded(lambda: _repeat(args))
    elif args.command == "check-raw":
        code = guarded(lambda: report(raw.check_links(Path(args.folder))))
    elif args.command == "weights":
        code = guarded(lambda: _weights(args))
    elif getattr(args, "suggest", None):  # op-classifier audit --suggest FOLDER: drafts, no audit
        code = guarded(
            lambda: report(
                corrections.suggest(config.validate(config.compose(tuple(args.overrides))), Path(args.suggest))
            )
        )
    else:
        _stop_with_repeat()
        workers, processes = getattr(args, "workers", None), getattr(args, "processes", 1)
        code = guarded(lambda: _stage(args.command, args.overrides, workers, processes, args.verbose))
    sys.exit(code)


if __name__ == "__main__":
    main()
