"""The ``scarkids`` command line (and ``python main.py --mode ...``, the seed's form).

    scarkids train      --config config.yaml [--seed N] [--fresh]
    scarkids infer      --config config.yaml [--checkpoint P] [--data_path P] [--output_dir D]
    scarkids sequential --config examples/sequential.yaml
    scarkids generate   --checkpoint P --cell_type T --batch B --n_cells N --output cells.h5ad
    scarkids report     RUN_DIR (an inference output folder or a checkpoint folder)
    scarkids demo | simulate | evaluate

Any :class:`~scarkids.errors.ScarkidsError` becomes one line ``error: <message>`` on stderr
and exit code 2 (with the traceback too under ``--debug``); Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings

from scarkids import __version__
from scarkids.constants import (
    BEST_CHECKPOINT,
    EXPRESSION_FILE,
    LAST_CHECKPOINT,
    LATENT_FILE,
    PREDICTIONS_FILE,
    RUN_INFO_FILE,
)
from scarkids.errors import InputDataError, ScarkidsError

log = logging.getLogger("scarkids.run")

MODES = ("train", "inference", "sequential")
_SEED_ONLY = ("checkpoint", "data_path", "output_dir")  # train reads --data_path


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    argv = _translate_mode(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already reported
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from scarkids.cli.common import console_logging
    from scarkids.compute import distributed

    args.argv = argv
    # in a distributed run only rank 0 talks; the others report errors only
    level = logging.INFO if distributed.is_main_process() else logging.ERROR
    with console_logging(level=level), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.showwarning = _log_warning
        try:
            return args.run(args) or 0
        except KeyboardInterrupt as e:
            message = getattr(e, "message", None) or "interrupted"
            print(message, file=sys.stderr)
            return 130
        except ScarkidsError as e:
            if args.debug:
                traceback.print_exc()
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 2
        except MissingExtraError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2


class MissingExtraError(Exception):
    """An optional dependency is not installed; the message is the install hint."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    log.warning("%s", message)


def _translate_mode(argv: list[str]) -> list[str]:
    """``--mode train --config C`` (the seed's form) -> ``train --config C``."""
    for i, arg in enumerate(argv):
        if arg == "--mode" and i + 1 < len(argv):
            return [argv[i + 1], *argv[:i], *argv[i + 2 :]]
        if arg.startswith("--mode="):
            return [arg.split("=", 1)[1], *argv[:i], *argv[i + 1 :]]
    return argv


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``scarkids`` parser: one subcommand per task, every option with its default."""
    parser = argparse.ArgumentParser(
        prog="scarkids",
        description="scARKIDS: single-cell RNA-seq integration with a VAE and a latent "
        "diffusion prior. Also callable as: python main.py --mode train|inference|sequential.",
    )
    parser.add_argument("--version", action="version", version=f"scarkids {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = _shared_options()
    _add_train(sub, parents)
    _add_infer(sub, parents)
    _add_sequential(sub, parents)
    _add_generate(sub, parents)
    _add_demo(sub, parents)
    _add_simulate(sub, parents)
    _add_evaluate(sub, parents)
    _add_de(sub, parents)
    _add_report(sub, parents)
    return parser


def _shared_options() -> dict[str, argparse.ArgumentParser]:
    """Option groups shared by several subcommands (argparse parents)."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    common = argparse.ArgumentParser(add_help=False, parents=[debug])
    common.add_argument(
        "--config", default="config.yaml", help="config file (default: %(default)s)"
    )
    common.add_argument(
        "--seed", type=int, help="random seed (default: training.seed of the config)"
    )
    common.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        help="overrides training.device and inference.device (default: the config's, auto)",
    )
    io = argparse.ArgumentParser(add_help=False)
    io.add_argument(
        "--checkpoint", help=f"model checkpoint (default: <checkpoint_dir>/{BEST_CHECKPOINT})"
    )
    io.add_argument(
        "--data_path", "--data-path", help="data to embed (default: data.test_data_path)"
    )
    io.add_argument(
        "--output_dir", "--output-dir", help="output folder (default: inference.output_dir)"
    )
    train_data = argparse.ArgumentParser(add_help=False)
    train_data.add_argument(
        "--data_path",
        "--data-path",
        help="training data; overrides data.train_data_path (default: the config's)",
    )
    seed_only = argparse.ArgumentParser(add_help=False)
    seed_only_train = argparse.ArgumentParser(add_help=False)
    for name in _SEED_ONLY:  # accepted (and ignored) so seed-style scripts keep working
        seed_only.add_argument(f"--{name}", help=argparse.SUPPRESS)
        if name != "data_path":
            seed_only_train.add_argument(f"--{name}", help=argparse.SUPPRESS)
    from_checkpoint = argparse.ArgumentParser(add_help=False, parents=[debug])
    from_checkpoint.add_argument(
        "--checkpoint", required=True, help="a trained model's checkpoint (.pt)"
    )
    from_checkpoint.add_argument(
        "--seed", type=int, default=0, help="random seed (default: %(default)s)"
    )
    from_checkpoint.add_argument(
        "--device", choices=("auto", "cpu", "cuda", "mps"), default="auto", help="default: auto"
    )
    fresh = argparse.ArgumentParser(add_help=False)
    fresh.add_argument("--fresh", action="store_true", help=f"ignore an existing {LAST_CHECKPOINT}")
    fresh.add_argument(
        "--devices",
        type=int,
        help="train with this many processes on this machine through PyTorch DDP (one per "
        "GPU, or gloo on CPUs; 1 = the distributed code path with one process); for several "
        "machines use torchrun, see the README (default: one process, no DDP)",
    )
    return {
        "debug": debug,
        "common": common,
        "io": io,
        "train_data": train_data,
        "seed_only": seed_only,
        "seed_only_train": seed_only_train,
        "fresh": fresh,
        "from_checkpoint": from_checkpoint,
    }


def _add_train(sub, parents: dict) -> None:
    p = sub.add_parser(
        "train",
        parents=[
            parents["common"],
            parents["fresh"],
            parents["train_data"],
            parents["seed_only_train"],
        ],
        help=f"train a model (resumes from <checkpoint_dir>/{LAST_CHECKPOINT} when it matches)",
        description="Train on data.train_data_path (or --data_path); writes "
        f"{BEST_CHECKPOINT} and {LAST_CHECKPOINT} to training.checkpoint_dir and one line per epoch to "
        "<log_dir>/training.log. Running the same command again resumes an interrupted run.",
    )
    p.set_defaults(run=_cmd_train)


def _add_infer(sub, parents: dict) -> None:
    p = sub.add_parser(
        "infer",
        aliases=["inference"],
        parents=[parents["common"], parents["io"]],
        help="embed, batch-correct and annotate cells with a trained model",
        description=f"Writes {LATENT_FILE}, {EXPRESSION_FILE}, {PREDICTIONS_FILE} and "
        f"{RUN_INFO_FILE} to the output folder.",
    )
    p.set_defaults(run=_cmd_infer)


def _add_sequential(sub, parents: dict) -> None:
    p = sub.add_parser(
        "sequential",
        parents=[parents["common"], parents["fresh"], parents["seed_only"]],
        help="train the sessions of training.sessions in order (transfer learning)",
        description="Each session starts from the previous session's output_checkpoint.",
    )
    p.set_defaults(run=_cmd_sequential)


def _add_generate(sub, parents: dict) -> None:
    p = sub.add_parser(
        "generate",
        parents=[parents["from_checkpoint"]],
        help="generate cells of chosen types as chosen batches would measure them (.h5ad)",
        description="Draws latent codes from the prior of each cell type and decodes them to "
        "counts as each batch would have measured them (SCARKIDS.generate). Cells of one "
        "type share their codes across the batches asked for (counterfactual pairs).",
    )
    p.add_argument("--output", required=True, help="the .h5ad file to write")
    p.add_argument(
        "--n_cells", "--n-cells", type=int, required=True, help="cells per (type, batch)"
    )
    p.add_argument(
        "--cell_type",
        "--cell-type",
        action="append",
        help="a cell type (repeat the flag or separate by commas; default: every type)",
    )
    p.add_argument(
        "--batch", action="append", help="a batch (repeat or comma-separate; default: every batch)"
    )
    p.add_argument(
        "--library_size",
        "--library-size",
        type=float,
        help="total counts per cell (default: drawn from the batch's observed library sizes)",
    )
    p.add_argument(
        "--n_steps",
        "--n-steps",
        type=int,
        help="reverse diffusion steps; fewer than the model's use the DDIM sampler "
        "(default: the full chain)",
    )
    p.set_defaults(run=_cmd_generate)


def _add_de(sub, parents: dict) -> None:
    p = sub.add_parser(
        "de",
        parents=[parents["from_checkpoint"]],
        help="differential expression between groups of cells from a trained model (.csv)",
        description="Posterior differential expression (SCARKIDS.differential_expression, "
        "lvm-DE as in scvi-tools): each group of --groupby against the rest, --group1 "
        "against the rest, or --group1 against --group2.",
    )
    p.add_argument("--data_path", "--data-path", required=True, help="the cells (.h5ad)")
    p.add_argument("--groupby", required=True, help="obs column that defines the groups")
    p.add_argument("--group1", help="the group to test (default: every group in turn)")
    p.add_argument("--group2", help="the group to compare with (default: the rest)")
    p.add_argument("--output", required=True, help="the .csv file to write")
    p.add_argument("--mode", choices=("change", "vanilla"), default="change")
    p.add_argument("--delta", type=float, default=0.25, help="|LFC| threshold (mode change)")
    p.add_argument("--fdr_target", "--fdr-target", type=float, default=0.05)
    p.add_argument("--n_samples", "--n-samples", type=int, default=5000)
    p.add_argument(
        "--no_batch_correction",
        "--no-batch-correction",
        action="store_true",
        help="decode each cell in its own batch instead of averaging over the batches",
    )
    p.add_argument("--layer", help="layer with the raw counts (default: X)")
    p.set_defaults(run=_cmd_de)


def _add_report(sub, parents: dict) -> None:
    p = sub.add_parser(
        "report",
        parents=[parents["debug"]],
        help="(re)build report.html of a finished run from its files",
        description="Writes RUN_DIR/report.html, one self-contained page (inline images): the "
        "run's data, training curves, validation metrics, UMAPs, composition, predictions, "
        f"warnings and output files. RUN_DIR is an inference output folder ({RUN_INFO_FILE}) "
        f"or a training checkpoint folder ({BEST_CHECKPOINT}); run it from the folder the run was "
        "started in, so that the relative paths it recorded resolve.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's output or checkpoint folder")
    p.add_argument(
        "--max_cells",
        "--max-cells",
        type=int,
        help="UMAPs on a seeded subsample of at most this many cells (default: the run "
        "config's report.max_cells, 10000)",
    )
    p.set_defaults(run=_cmd_report)


def _add_demo(sub, parents: dict) -> None:
    p = sub.add_parser(
        "demo",
        parents=[parents["debug"]],
        help="simulate data, train, run inference and draw a UMAP (a few minutes on a CPU)",
        description="Simulates cells with batch effects and cell types, trains scARKIDS on "
        "them, runs inference and draws demo_output/umap.png (the scARKIDS latent) and "
        "demo_output/umap_unintegrated.png (before integration), coloured by batch and by "
        "cell type. Needs no data and no config.",
    )
    p.add_argument(
        "--output_dir", "--output-dir", default="demo_output", help="default: %(default)s"
    )
    p.add_argument(
        "--n_cells", "--n-cells", type=int, default=3000, help="cells (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default="auto",
        help="default: %(default)s (a GPU when there is one)",
    )
    p.add_argument(
        "--fresh", action="store_true", help=f"ignore a previous demo's {LAST_CHECKPOINT}"
    )
    p.set_defaults(run=_cmd_demo)


def _add_simulate(sub, parents: dict) -> None:
    p = sub.add_parser(
        "simulate",
        parents=[parents["debug"]],
        help="write a simulated dataset with batch effects (.h5ad)",
        description="Writes raw counts with obs['batch'] and obs['cell_type'] "
        "(scarkids.datasets.simulate).",
    )
    p.add_argument("--output", required=True, help="the .h5ad file to write")
    for flag, kind, default, what in (
        ("n_cells", int, 3000, "cells"),
        ("n_genes", int, 1000, "genes"),
        ("n_batches", int, 3, "batches"),
        ("n_cell_types", int, 5, "cell types"),
        ("batch_effect", float, 0.5, "log-scale sd of the per-batch gene effects"),
    ):
        p.add_argument(
            f"--{flag}",
            f"--{flag.replace('_', '-')}",
            type=kind,
            default=default,
            help=f"{what} (default: %(default)s)",
        )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(run=_cmd_simulate)


def _add_evaluate(sub, parents: dict) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[parents["debug"]],
        help="scIB metrics of an embedding (needs: pip install 'scarkids[eval]')",
        description="Scores an embedding with the scIB metrics (scib-metrics 0.5): bio "
        "conservation, batch correction and their Total (higher is better for every column); "
        "writes metrics.tsv, metrics.json and a table figure.",
    )
    p.add_argument("--data", required=True, help=".h5ad with batch and cell-type columns")
    p.add_argument("--embedding", required=True, help="a .npy file (rows = cells) or an obsm key")
    p.add_argument(
        "--batch_key", "--batch-key", default="batch", help="obs column (default: %(default)s)"
    )
    p.add_argument(
        "--labels_key",
        "--labels-key",
        default="cell_type",
        help="obs column (default: %(default)s)",
    )
    p.add_argument(
        "--prediction_key",
        "--prediction-key",
        help="obs column of predicted labels: adds accuracy and macro-F1 (default: none)",
    )
    p.add_argument(
        "--output_dir", "--output-dir", default="evaluation", help="default: %(default)s"
    )
    p.add_argument("--subsample", type=int, help="evaluate at most this many cells (default: all)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the subsample (default: %(default)s)"
    )
    p.set_defaults(run=_cmd_evaluate)


# --------------------------------------------------------------------------- commands


def _config(args) -> dict:
    from scarkids.cli.common import read_config

    overrides = {}
    if getattr(args, "command", None) == "train" and getattr(args, "data_path", None):
        overrides["data.train_data_path"] = args.data_path
    if args.seed is not None:
        overrides["training.seed"] = args.seed
    if args.device is not None:
        overrides["training.device"] = overrides["inference.device"] = args.device
    return read_config(args.config, overrides)


def _ignored_seed_flags(args) -> None:
    for name in _SEED_ONLY:
        if name == "data_path" and args.command == "train":
            continue  # train reads it: it overrides data.train_data_path
        if getattr(args, name, None) is not None:
            log.warning("--%s is used by --mode inference only; ignored", name)


def _relaunch(args) -> int | None:
    """``--devices N`` (N > 1) outside torchrun: start N processes of the same command."""
    from scarkids.compute import distributed

    if args.devices is None or distributed.launched_by_torchrun():
        return None
    if args.devices < 1:
        raise InputDataError(f"--devices {args.devices}: give 1 or more processes")
    argv = list(args.argv)
    for i, a in enumerate(argv):
        if a == "--devices":
            del argv[i : i + 2]
            break
        if a.startswith("--devices="):
            del argv[i]
            break
    return distributed.launch(args.devices, argv)


def _cmd_train(args) -> int:
    from scarkids.cli.train import run_train

    relaunched = _relaunch(args)
    if relaunched is not None:
        return relaunched
    _ignored_seed_flags(args)
    cfg = _config(args)
    result = run_train(cfg, config_path=args.config, fresh=args.fresh)
    log.info("Best model: %s | log: %s/training.log", result["output"], cfg["training"]["log_dir"])
    return 0


def _cmd_sequential(args) -> int:
    from scarkids.cli.train import run_sequential

    relaunched = _relaunch(args)
    if relaunched is not None:
        return relaunched
    _ignored_seed_flags(args)
    run_sequential(_config(args), config_path=args.config, fresh=args.fresh)
    return 0


def _cmd_infer(args) -> int:
    from scarkids.cli.infer import run_inference

    run_inference(
        _config(args),
        config_path=args.config,
        checkpoint=args.checkpoint,
        data_path=args.data_path,
        output_dir=args.output_dir,
    )
    return 0


def _cmd_report(args) -> int:
    from scarkids.cli.report import rebuild

    if args.max_cells is not None and args.max_cells < 100:
        raise InputDataError(f"--max_cells {args.max_cells}: give at least 100 cells")
    rebuild(args.run_dir, max_cells=args.max_cells)
    return 0


def _cmd_demo(args) -> int:
    from scarkids.cli.demo import run_demo

    paths = run_demo(
        args.output_dir,
        n_cells=args.n_cells,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        fresh=args.fresh,
    )
    print("\nDemo outputs:")
    for name, path in paths.items():
        print(f"  {name:<10} {path}")
    return 0


def _names(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _output_and_model(args, kind: str):
    """``--output`` as a path (its folder writable, not a folder itself) and the model of
    ``--checkpoint``: checked before any work, so that a bad request writes nothing."""
    from pathlib import Path

    from scarkids.cli.common import check_writable_dir
    from scarkids.model.scarkids import SCARKIDS

    out = Path(args.output)
    check_writable_dir(out.parent, "the folder of --output")
    if out.is_dir():
        raise InputDataError(f"--output {out} is a folder; give the {kind} file to write")
    return out, SCARKIDS.load(args.checkpoint, device=args.device)


def _cmd_generate(args) -> int:
    from scarkids.cli.common import write_h5ad

    out, model = _output_and_model(args, ".h5ad")
    cells = model.generate(
        args.n_cells,
        cell_type=_names(args.cell_type),
        batch=_names(args.batch),
        library_size=args.library_size,
        n_steps=args.n_steps,
        seed=args.seed,
    )
    write_h5ad(cells, out)
    kinds = cells.obs.groupby(list(cells.obs.columns[:2]), observed=True).ngroups
    print(
        f"Wrote {out}: {cells.n_obs} generated cells x {cells.n_vars} genes ({kinds} type x batch)"
    )
    return 0


def _cmd_de(args) -> int:
    from scarkids.cli.infer import _read_query
    from scarkids.data.files import write_atomic

    out, model = _output_and_model(args, ".csv")
    data = {
        "batch_key": model.registry.batch_key,
        "counts_layer": args.layer,
        "zero_count_cells": "drop",
        "unlabeled_category": model.registry.unlabeled_category,
        "cell_type_key": None,
    }
    adata = _read_query({"data": data, "global": {"supervised": False}}, model, args.data_path)
    if args.groupby not in adata.obs:
        raise InputDataError(
            f"--groupby {args.groupby!r} is not a column of obs in {args.data_path}; columns: "
            f"{', '.join(map(str, list(adata.obs.columns)[:12]))}"
        )
    table = model.differential_expression(
        adata,
        groupby=args.groupby,
        group1=args.group1,
        group2=args.group2,
        mode=args.mode,
        delta=args.delta,
        batch_correction=not args.no_batch_correction,
        fdr_target=args.fdr_target,
        n_samples=args.n_samples,
        seed=args.seed,
    )
    write_atomic(out, lambda tmp: table.to_csv(tmp))
    called = table.filter(like="is_de_fdr_").iloc[:, 0]
    print(
        f"Wrote {out}: {table['comparison'].nunique()} comparison(s) x {len(model.registry.gene_names)} genes; "
        f"{int(called.sum())} gene calls at FDR {args.fdr_target}"
    )
    return 0


def _cmd_simulate(args) -> int:
    from scarkids.cli.common import write_h5ad
    from scarkids.data.simulate import simulate

    for name in ("n_cells", "n_genes", "n_batches", "n_cell_types"):
        if getattr(args, name) < 1:
            raise InputDataError(f"--{name} must be at least 1, got {getattr(args, name)}")
    adata = simulate(
        args.n_cells,
        args.n_genes,
        n_batches=args.n_batches,
        n_cell_types=args.n_cell_types,
        batch_effect=args.batch_effect,
        seed=args.seed,
    )
    path = write_h5ad(adata, args.output)
    print(f"Wrote {path}: {adata.n_obs} cells x {adata.n_vars} genes, obs 'batch' and 'cell_type'")
    return 0


def _cmd_evaluate(args) -> int:
    from pathlib import Path

    import numpy as np

    from scarkids.cli.prepare import read_h5ad
    from scarkids.metrics.scib import evaluate, write_evaluation

    adata = read_h5ad(args.data)
    key = args.embedding
    if key.endswith(".npy"):
        if not Path(key).exists():
            raise InputDataError(f"{key}: embedding file not found")
        emb = np.load(key)
        if emb.ndim != 2 or emb.shape[0] != adata.n_obs:
            raise InputDataError(
                f"{key}: embedding has shape {emb.shape}, expected one row per cell of "
                f"{args.data} ({adata.n_obs} cells)"
            )
        key = Path(key).stem
        adata.obsm[key] = emb
    elif key not in adata.obsm:
        raise InputDataError(
            f"--embedding {key!r}: neither a .npy file nor an obsm key of {args.data} "
            f"(obsm keys: {', '.join(adata.obsm.keys()) or 'none'})"
        )
    try:
        table = evaluate(
            adata,
            embedding_key=key,
            batch_key=args.batch_key,
            labels_key=args.labels_key,
            prediction_key=args.prediction_key,
            subsample=args.subsample,
            seed=args.seed,
        )
    except ImportError as e:
        raise MissingExtraError(str(e)) from None
    written = write_evaluation(
        table,
        args.output_dir,
        adata=adata,
        embedding_key=key,
        batch_key=args.batch_key,
        labels_key=args.labels_key,
        seed=args.seed,
    )
    print(table.T.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"Wrote {', '.join(str(p) for p in written)}")
    return 0
