"""The command line: every command's --help, a bad value for every flag (exit 2, one line), the run path and
per-epoch progress of `train`, one JSON under torchrun, `doctor`; evaluate and predict print JSON."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import imgclf, make_folder, run_cli
from imgclf.cli import EPILOG, HelpFormatter, build_parser, config_from_args
from imgclf.training.callbacks import AnnounceRunDir, ProgressBar


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A tiny run through the real entry point, output captured (stderr is a pipe, not a terminal)."""
    root = make_folder(tmp_path_factory.mktemp("data") / "imgs", classes=3, per_class=20, splits=True)
    run = root.parent / "run"
    result = imgclf("train", "--data", str(root), "--model", "tiny", "--epochs", "3", "--batch-size", "16",
                    "--out", str(run), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return run, result


FILE_OPTIONS = {"--checkpoint", "--onnx", "--resume", "--weights", "--config", "--variants"}


def parse_as_documented(argv: list[str]) -> argparse.Namespace:
    """Parse a documented command line without running it: the files it reads are stood in for by empty ones
    under the (temporary) working directory, and training options are resolved into a config (recipes,
    --set, values) as `imgclf` would before any work."""
    for option, value in zip(argv, argv[1:], strict=False):
        if option in FILE_OPTIONS and not Path(value).is_absolute() and ".." not in Path(value).parts:
            Path(value).parent.mkdir(parents=True, exist_ok=True)
            Path(value).touch()
    args = build_parser().parse_args(argv)
    if args.command in ("train", "compare", "lr-find"):
        config_from_args(args)
    return args


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def value_options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options that take a value (switches and --help take none)."""
    return [a for a in p._actions if a.option_strings and a.nargs != 0]


def test_every_command_has_help_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "fine-tuned on your own photos" in out and "examples:" in out
    for name, p in subcommands().items():
        code, out, err = run_cli([name, "--help"], capsys)
        assert code == 0 and out.startswith(f"usage: imgclf {name}"), err
        formatter = HelpFormatter(f"imgclf {name}")
        for action in p._actions:
            assert action.help, f"imgclf {name} {action.option_strings or action.dest} has no help"
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)
    train_help = run_cli(["train", "--help"], capsys)[1]
    assert "(default: digits)" in " ".join(train_help.split())  # --data no longer defaults silently


def test_every_flag_a_help_text_names_exists() -> None:
    parser = build_parser()
    parsers = [parser, *subcommands().values()]
    known = {flag for p in parsers for a in p._actions for flag in a.option_strings}
    texts = [parser.description, parser.epilog] + [t for p in parsers for t in (p.description, *(a.help for a in
                                                                                                   p._actions))]
    named = {flag for text in texts if text for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)}
    assert named and named <= known, sorted(named - known)


def test_help_examples_parse() -> None:
    examples = [line.split()[1:] for line in EPILOG.splitlines() if line.strip().startswith("imgclf ")]
    assert len(examples) >= 5
    for argv in examples:
        parse_as_documented(argv)


# A bad value for every option of every command: (command, option) -> (arguments, what the message names).
# {file} is an existing file, {ckpt} a real checkpoint.
_TRAIN_BAD: dict[str, tuple[list[str], str]] = {
    "--data": (["--data", "/no/such/folder"], "data not found"),
    "--data-dir": (["--data-dir", "{file}"], "is a file"),
    "--model": (["--model", "nonet"], "unknown model"),
    "--weights": (["--weights", "/no/such.pth"], "weights file not found"),
    "--strategy": (["--strategy", "bogus"], "strategy must be one of"),
    "--epochs": (["--epochs", "-1"], "epochs must be at least 1, got -1"),
    "--batch-size": (["--batch-size", "0"], "batch_size must be at least 1"),
    "--lr": (["--lr", "0"], "lr must be above 0"),
    "--optimizer": (["--optimizer", "adam"], "optimizer must be one of adamw, sgd, got 'adam'"),
    "--weight-decay": (["--weight-decay", "-0.1"], "weight_decay must be at least 0"),
    "--schedule": (["--schedule", "bogus"], "schedule must be one of"),
    "--label-smoothing": (["--label-smoothing", "1"], "label_smoothing must be below 1"),
    "--dropout": (["--dropout", "x"], "dropout must be a number, got 'x'"),
    "--image-size": (["--image-size", "2"], "image_size must be at least 8"),
    "--resize": (["--resize", "fill"], "resize must be one of crop, pad, squash"),
    "--val-fraction": (["--val-fraction", "1"], "val_fraction must be below 1"),
    "--subset": (["--subset", "0"], "subset must be at least 1"),
    "--train-fraction": (["--train-fraction", "0"], "train_fraction must be above 0"),
    "--seed": (["--seed", "-1"], "seed must be at least 0"),
    "--device": (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
    "--amp-dtype": (["--amp-dtype", "fp8"], "amp_dtype must be one of"),
    "--grad-clip": (["--grad-clip", "nan"], "grad_clip must be a finite number"),
    "--time-budget": (["--time-budget", "-5"], "time_budget must be above 0"),
    "--early-stop": (["--early-stop", "0"], "early_stop must be at least 1"),
    "--loader": (["--loader", "disk"], "loader must be one of"),
    "--num-workers": (["--num-workers", "-1"], "num_workers must be at least 0"),
    "--threads": (["--threads", "0"], "threads must be at least 1"),
    "--crop-pad": (["--crop-pad", "1.5"], "crop_pad must be an integer"),
    "--cutout": (["--cutout", "-2"], "cutout must be at least 0"),
    "--low-res": (["--low-res", "1"], "low_res must be below 1"),
    "--class-weights": (["--class-weights", "inverse"], "class_weights must be one of auto, none"),
    "--sampler": (["--sampler", "weighted"], "sampler must be one of balanced, shuffle"),
    "--monitor": (["--monitor", "f1"], "monitor must be one of macro_f1, map, val_acc"),
    "--mixup": (["--mixup", "-0.5"], "mixup must be at least 0"),
    "--cutmix": (["--cutmix", "x"], "cutmix must be a number"),
    "--mix-switch": (["--mix-switch", "2"], "mix_switch must be at most 1"),
    "--ema": (["--ema", "1"], "ema must be below 1"),
    "--accumulate": (["--accumulate", "0"], "accumulate must be at least 1"),
    "--logger": (["--logger", "wandb"], "logger must be one of mlflow, none, tensorboard"),
    "--checkpoint-every": (["--checkpoint-every", "1h"], "checkpoint_every must be a number of steps"),
    "--config": (["--config", "/no/such.yaml"], "config file not found"),
    "--recipe": (["--recipe", "nope"], "unknown recipe"),
    "--set": (["--set", "epochs"], "--set expects KEY=VALUE"),
}
BAD: dict[str, dict[str, tuple[list[str], str]]] = {
    "train": {**_TRAIN_BAD, "--out": (["--out", "{file}"], "is a file"),
              "--resume": (["--resume", "/no/such.pt"], "checkpoint not found")},
    "compare": {**{k: (["--out", "cmp", *v[0]], v[1]) for k, v in _TRAIN_BAD.items()},
                "--out": (["--out", "{file}"], "is a file"),
                "--preset": (["--out", "cmp", "--preset", "nope"], "unknown preset"),
                "--variants": (["--out", "cmp", "--variants", "/no/such.yaml"], "not found"),
                "--fractions": (["--out", "cmp", "--fractions", "0.5,2"], "--fractions: 2 is not in (0, 1]"),
                "--budget": (["--out", "cmp", "--budget", "0"], "budget must be above 0"),
                "--seeds": (["--out", "cmp", "--seeds", "0"], "seeds must be")},
    "lr-find": {**_TRAIN_BAD, "--out": (["--out", "{file}"], "is a file"),
                "--start-lr": (["--start-lr", "0"], "start_lr must be above 0"),
                "--end-lr": (["--end-lr", "x"], "end_lr must be a number"),
                "--steps": (["--steps", "1"], "steps must be at least 2")},
    "evaluate": {"--checkpoint": (["--checkpoint", "/no/such.pt"], "checkpoint not found"),
                 "--data": (["--checkpoint", "{ckpt}", "--data", "/no/such/folder"], "data not found"),
                 "--data-dir": (["--checkpoint", "{ckpt}", "--data-dir", "{file}"], "is a file"),
                 "--split": (["--checkpoint", "{ckpt}", "--split", "train"], "invalid choice: 'train'"),
                 "--device": (["--checkpoint", "{ckpt}", "--device", "gpu"], "device must be")},
    "predict": {"--checkpoint": (["--checkpoint", "/no/such.pt", "x.png"], "checkpoint not found"),
                "--onnx": (["--onnx", "/no/such.onnx", "x.png"], "ONNX file not found"),
                "--top-k": (["--checkpoint", "{ckpt}", "--top-k", "0", "x.png"], "top_k must be at least 1"),
                "--device": (["--checkpoint", "{ckpt}", "--device", "gpu", "x.png"], "device must be"),
                "--explain": (["--checkpoint", "{ckpt}", "--explain", "{file}", "x.png"], "is a file"),
                "--out": (["--checkpoint", "{ckpt}", "--out", ".", "x.png"], "is a folder"),
                "--batch-size": (["--checkpoint", "{ckpt}", "--batch-size", "0", "x.png"],
                                 "batch_size must be at least 1"),
                "--reject-below": (["--checkpoint", "{ckpt}", "--reject-below", "1", "x.png"],
                                   "reject-below must be below 1"),
                "--target-accuracy": (["--checkpoint", "{ckpt}", "--target-accuracy", "0", "x.png"],
                                      "target-accuracy must be above 0"),
                "IMAGE": (["--checkpoint", "{ckpt}", "/no/such.png"], "image not found")},
    "report": {"RUN_DIR": (["/no/such/run"], "run directory not found")},
    "export": {"--checkpoint": (["--checkpoint", "/no/such.pt", "--out", "m.onnx"], "checkpoint not found"),
               "--out": (["--checkpoint", "{ckpt}", "--out", "."], "is a folder"),
               "--opset": (["--checkpoint", "{ckpt}", "--out", "m.onnx", "--opset", "3"], "opset must be at least 7"),
               "--calibration-images": (["--checkpoint", "{ckpt}", "--out", "m.onnx", "--int8",
                                         "--calibration-images", "0"], "calibration-images must be"),
               "--max-accuracy-drop": (["--checkpoint", "{ckpt}", "--out", "m.onnx", "--int8",
                                        "--max-accuracy-drop", "-1"], "must be"),
               "--data": (["--checkpoint", "{ckpt}", "--out", "m.onnx", "--data", "digits"], "--int8")},
    "serve": {"--checkpoint": (["--checkpoint", "/no/such.pt"], "checkpoint not found"),
              "--onnx": (["--onnx", "/no/such.onnx"], "ONNX file not found"),
              **{flag: (["--checkpoint", "{ckpt}", flag, value], message) for flag, value, message in [
                  ("--host", "bad host", "not an IP address or host name"),
                  ("--port", "70000", "port must be at most 65535"),
                  ("--api-key", "", "the API key must be non-empty"),
                  ("--max-batch-size", "0", "max_batch_size must be at least 1"),
                  ("--max-wait-ms", "-1", "max_wait_ms must be at least 0"),
                  ("--max-upload-bytes", "0", "max_upload_bytes must be at least 1"),
                  ("--max-pixels", "many", "max_pixels must be an integer"),
                  ("--max-request-pixels", "0", "max_request_pixels must be at least 1"),
                  ("--max-files", "0", "max_files must be at least 1"),
                  ("--reject-below", "0", "reject-below must be above 0"),
                  ("--target-accuracy", "1.5", "target-accuracy must be at most 1"),
                  ("--device", "gpu", "device must be")]}},
    "scratch-nn": {"--data": (["--out", "nn", "--data", "/no/such/folder"], "data not found"),
                   "--data-dir": (["--data-dir", "{file}"], "is a file"),
                   "--out": (["--out", "{file}"], "is a file"),
                   **{flag: ([flag, value], message) for flag, value, message in [
                       ("--epochs", "0", "epochs must be at least 1"),
                       ("--batch-size", "x", "batch_size must be an integer"),
                       ("--lr", "-1", "lr must be above 0"),
                       ("--optimizer", "adamw", "invalid choice: 'adamw'"),
                       ("--hidden", "0", "hidden must be at least 1"),
                       ("--weight-decay", "-1", "weight_decay must be at least 0"),
                       ("--dropout", "1", "dropout must be below 1"),
                       ("--patience", "0", "patience must be at least 1"),
                       ("--time-budget", "0", "time_budget must be above 0"),
                       ("--subset", "0", "subset must be at least 1"),
                       ("--image-size", "2", "image_size must be at least 4"),
                       ("--seed", "x", "seed must be an integer")]}},
    "inspect": {"--data": (["--data", "/no/such/folder"], "data not found"),
                "--checkpoint": (["--data", "digits", "--checkpoint", "/no/such.pt"], "checkpoint not found"),
                "--out": (["--data", "digits", "--out", "{file}"], "is a file"),
                "--data-dir": (["--data", "digits", "--data-dir", "{file}"], "is a file"),
                "--max-distance": (["--data", "digits", "--max-distance", "65"], "max_distance must be at most 64"),
                "--device": (["--data", "digits", "--device", "gpu"], "device must be")},
    "doctor": {},
    "models": {},
    "weights": {"--hub-url": (["fetch", "timm:resnet18", "--hub-url", "ftp://x"], "must be an http(s) URL")},
    "recipes": {},
}


def test_bad_value_table_covers_every_option() -> None:
    """Every option that takes a value has a bad-value case below; a new flag without one fails here."""
    for name, p in subcommands().items():
        assert set(BAD[name]) >= {a.option_strings[-1] for a in value_options(p)}, name
    assert set(BAD) == set(subcommands())


@pytest.mark.parametrize("command, option", [(c, o) for c, cases in BAD.items() for o in cases])
def test_bad_value_exits_2_with_one_line(command: str, option: str, checkpoint: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    args, message = BAD[command][option]
    argv = [command, *(a.format(file=a_file, ckpt=checkpoint) for a in args)]
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (argv, out, err)
    assert err.count("\n") == 1 and err.startswith("imgclf: error: ") and message in err, (argv, err)
    assert not list(tmp_path.glob("*/checkpoints")), "a refused command wrote a run directory"


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "digits", "--set", "learning_rat=0.1"], "unknown config key"),
    (["train", "--data", "digits", "--set", "epochs=many"], "must be an integer"),
    (["train", "--data", "digits", "--model", "fastcnn", "--pretrained"], "no local pretrained weights"),
])
def test_config_errors_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_no_command_and_unknown_command_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["trian"], ["train", "--epoch", "3", "--bogus"]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("imgclf: error: "), err


def test_train_prints_run_dir_and_a_line_per_epoch(trained: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run, result = trained
    lines = result.stderr.splitlines()
    assert lines[0] == f"imgclf: training; run directory: {run}"
    assert lines[-1].startswith(f"imgclf: wrote {run} ") and f"imgclf report {run}" in lines[-1]
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [e.split(":")[0] for e in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert json.loads(result.stdout)["run_dir"] == str(run)


def test_only_rank_0_prints_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Under torchrun every rank runs main(); RANK != 0 trains but prints neither the JSON nor the paths (the
    start line is the Trainer's rank check, faked here)."""
    data = make_folder(tmp_path / "imgs", classes=2, per_class=8)
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli(["train", "--data", str(data), "--model", "tiny", "--epochs", "1", "--quiet",
                              "--out", str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert code == 0 and out == "" and "wrote" not in err, (out, err)
    quiet, loud = io.StringIO(), io.StringIO()
    AnnounceRunDir(tmp_path, quiet).on_fit_start(SimpleNamespace(is_main=False))  # type: ignore[arg-type]
    AnnounceRunDir(tmp_path, loud).on_fit_start(SimpleNamespace(is_main=True))  # type: ignore[arg-type]
    assert quiet.getvalue() == "" and loud.getvalue() == f"imgclf: training; run directory: {tmp_path}\n"


def test_default_run_dir_is_printed_and_relative_to_cwd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "imgs", classes=2, per_class=8)
    code, out, err = run_cli(["train", "--data", str(data), "--model", "tiny", "--epochs", "1", "--quiet",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    run = Path(json.loads(out)["run_dir"])
    assert run.parent == Path("runs") and (tmp_path / run / "checkpoints" / "last.pt").is_file()
    assert f"run directory: {run}" in err


def test_progress_prints_one_line_an_epoch_off_a_terminal() -> None:
    stream = io.StringIO()  # not a terminal: no bars, one flushed line an epoch
    bar = ProgressBar(stream=stream)
    trainer = SimpleNamespace(config=SimpleNamespace(epochs=None, mixup=0.0, cutmix=0.0), time_budget=30.0,
                              train_loader=[0] * 4, epoch=0, current_lr=0.1)
    row = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.6, "lr": 0.1, "seconds": 7.5}
    bar.on_epoch_start(trainer)  # type: ignore[arg-type]
    for _ in range(4):
        bar.on_batch_end(trainer, 1.0)  # type: ignore[arg-type]
    bar.on_epoch_end(trainer, row)  # type: ignore[arg-type]
    assert stream.getvalue() == ("epoch 1: train loss 1.0000 acc 0.5000 | val loss 0.9000 acc 0.6000 | lr 1.00e-01 | "
                                 "7.5s of 30s\n")
    quiet = io.StringIO()
    ProgressBar(enabled=False, stream=quiet).on_epoch_end(trainer, row)  # type: ignore[arg-type]
    assert quiet.getvalue() == ""


def test_compare_names_paths_that_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "imgs", classes=2, per_class=10, splits=True)
    variants = tmp_path / "variants.yaml"
    variants.write_text("a: {model: tiny}\nb: {model: tiny, dropout: 0.2}\n")
    code, out, err = run_cli(["compare", "--data", str(data), "--variants", str(variants), "--epochs", "1",
                              "--out", "cmp", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert Path(result["report"]).is_file() and all(Path(r).is_dir() for r in result["runs"])
    hint = next(line for line in err.splitlines() if "imgclf report " in line)
    assert Path(hint.split("imgclf report ")[1]).is_dir()
    assert err.splitlines()[-1] == "imgclf: report: cmp/report.html"


def test_version_and_doctor(capsys: pytest.CaptureFixture[str], private_cache: Path) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("imgclf ")
    code, out, err = run_cli(["doctor"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) <= 30  # one screen
    for needle in ("python", "torch", "AVX-512", "bf16", "cuda", "efficientnet_lite0", str(private_cache),
                   "onnxruntime", "fastapi"):
        assert needle in out, needle
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    facts = json.loads(out)
    assert code == 0 and facts["cache"]["path"] == str(private_cache) and facts["cache"]["set_by"] == "IMGCLF_CACHE"
    assert set(facts["cpu"]["flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}


def test_doctor_reads_cpu_flags(tmp_path: Path) -> None:
    from imgclf.doctor import cpu_info, directory_size

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: sse avx avx2\n\n"
                    "processor\t: 1\nmodel name\t: Old CPU\nflags\t\t: sse avx avx2\n")
    cpu = cpu_info(info)
    assert cpu["model"] == "Old CPU" and cpu["flags"] == {"avx2": True, "avx512f": False, "avx512_bf16": False,
                                                          "amx_bf16": False}
    assert directory_size(tmp_path) == info.stat().st_size and directory_size(tmp_path / "none") == 0


def test_bad_config_file_and_foreign_checkpoint(tmp_path: Path, trained: tuple[Path, object],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = trained
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nnot_a_key: 1\n")
    code, _, err = run_cli(["train", "--data", "digits", "--config", str(bad)], capsys)
    assert code == 2 and "not_a_key" in err
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"not a checkpoint at all")
    code, _, err = run_cli(["evaluate", "--checkpoint", str(fake)], capsys)
    assert code == 2 and "not an imgclf checkpoint" in err
    code, _, err = run_cli(["train", "--data", "digits", "--out", str(run)], capsys)
    assert code == 2 and "--resume" in err
    assert (run / "checkpoints" / "last.pt").is_file()  # nothing already written was lost


def test_evaluate_and_predict_json(trained: tuple[Path, object], capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = trained
    last = str(run / "checkpoints" / "last.pt")
    code, out, err = run_cli(["evaluate", "--checkpoint", last, "--tta"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert set(report) >= {"accuracy", "loss", "per_class_accuracy", "confusion_matrix"}
    assert sum(map(sum, report["confusion_matrix"])) == report["num_images"] == 18  # 6 test images a class
    metrics = json.loads((run / "metrics.json").read_text())
    plain = json.loads(run_cli(["evaluate", "--checkpoint", last], capsys)[1])
    assert plain["accuracy"] == pytest.approx(metrics["test_accuracy"])

    images = sorted((run.parent / "imgs" / "test" / "class_1").glob("*.png"))[:3]
    code, out, err = run_cli(["predict", "--checkpoint", last, *map(str, images), "--top-k", "2"], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == list(map(str, images))
    assert all(len(line["top_k"]) == 2 and line["label"] == line["top_k"][0]["label"] for line in lines)
