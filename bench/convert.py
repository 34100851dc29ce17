"""Conversion: seconds per volume and peak RSS, against the bare model forward (the ceiling).

Cases, each in its own child process, whose peak RSS is read from ``VmHWM`` in
``/proc/self/status`` (the process's own memory map; ``ru_maxrss`` is not: a child that
Python's subprocess starts by vfork + exec inherits the parent's peak in it):

* ``classical``: the training-free map;
* ``unet-1`` / ``unet-3``: the bundled Light_U-Net (``bonect.demo.bundled_model()``) in the axial
  plane / in three planes, through
  :func:`bonect.converter.file_conversion.convert_path` (read the DICOM
  folder, preprocess, predict, fuse, map back, write the sCT series);
* ``bare-1`` / ``bare-3``: the same network's forward alone on as many slices as ``unet-1`` /
  ``unet-3`` forward (planes x input size, at the input size, same batch size), warm.

The pipeline forwards ``planes x input_size`` slices whatever the MR's matrix (it predicts on a
model cube of ``input_size``³), so ``ratio = bare seconds / pipeline seconds`` is the pipeline's
slices/s over the bare model's slices/s (target ≥ 0.8). Rounds interleave all cases so load
from other processes hits each of them alike; the table gives medians.

``--quick`` uses tiny volumes and a copy of the model whose manifest says 32² input (the U-Net
is fully convolutional), for smoke tests only.

    python bench/convert.py [--quick] [--runs 3] [--sizes 256,512] [--threads N]
                            [--precision auto|float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import CACHE, Samples, command_line, header, load_json, publish, table, verdict
from series import SeriesSpec, series_folder

SIZES = {
    256: SeriesSpec("conv-mr-200x256", "MR", 200, 256),
    512: SeriesSpec("conv-mr-400x512", "MR", 400, 512),
}
QUICK_SIZES = {
    64: SeriesSpec("q-conv-mr-40x64", "MR", 40, 64),
    96: SeriesSpec("q-conv-mr-60x96", "MR", 60, 96),
}
QUICK_INPUT = 32
BATCH = 16
PLANES = {
    "unet-1": ("axial",),
    "unet-3": ("axial", "coronal", "sagittal"),
    "bare-1": ("axial",),
    "bare-3": ("axial", "coronal", "sagittal"),
}


# -- the child: one case, one process ---------------------------------------------------------


def _timed(stages: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - started

    return wrapper


def _instrument(stages: dict[str, float]) -> None:
    """Time the pipeline's steps by wrapping the module attributes it calls through."""
    import bonect.converter.file_conversion as files
    import bonect.converter.inference as inference
    import bonect.converter.pipeline as pipeline

    files.read_input = _timed(stages, "read", files.read_input)
    files.write_synthetic_ct = _timed(stages, "write", files.write_synthetic_ct)
    pipeline.classical_sct = _timed(stages, "classical", pipeline.classical_sct)
    pipeline.prepare = _timed(stages, "prepare", pipeline.prepare)
    pipeline.predict_cube = _timed(stages, "predict+fuse", pipeline.predict_cube)
    pipeline.from_cube = _timed(stages, "from cube", pipeline.from_cube)
    inference.predict_plane = _timed(stages, "forward", inference.predict_plane)


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bonect.converter.model_folder import load_model
    from bonect.converter.pipeline import Classical

    baseline_mb = peak_rss_mb()
    device = torch.device("cpu")
    planes = PLANES.get(args.case, ())
    result: dict[str, Any] = {"case": args.case, "threads": torch.get_num_threads()}
    if args.case.startswith("bare"):
        from bonect.converter.inference import forward_context

        model = load_model(args.model, device=device, precision=args.precision)
        size = model.manifest.input_size
        n = len(planes) * size
        x = torch.rand(BATCH, 1, size, size).contiguous(memory_format=torch.channels_last)
        # the same arithmetic as the pipeline's forward (predict_plane), so the ratio is fair
        with torch.inference_mode(), forward_context(device, model.precision):
            model.network(x)  # warm
            started = time.perf_counter()
            for start in range(0, n, BATCH):
                model.network(x[: min(BATCH, n - start)])
            result["seconds"] = time.perf_counter() - started
        result["slices"] = n
    else:
        from bonect.converter.file_conversion import convert_path

        stages: dict[str, float] = {}
        _instrument(stages)
        method = (
            Classical()
            if args.case == "classical"
            else load_model(args.model, device=device, precision=args.precision)
        )
        out = Path(args.out)
        started = time.perf_counter()
        written = convert_path(
            args.series, out, method, planes=planes or ("axial",), batch_size=BATCH, device=device
        )
        result["seconds"] = time.perf_counter() - started
        result["files"] = len(written.paths)
        if "forward" in stages:
            stages["fuse"] = stages.pop("predict+fuse") - stages["forward"]
        result["stages"] = stages
        if args.case != "classical":
            result["slices"] = len(planes) * method.manifest.input_size  # type: ignore[union-attr]
        shutil.rmtree(out, ignore_errors=True)
    result["maxrss_mb"] = peak_rss_mb()
    result["baseline_mb"] = baseline_mb
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: ``VmHWM`` where Linux has it."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# -- the parent ---------------------------------------------------------------------------------


@dataclass
class Case:
    case: str
    size: int | None  # None: the bare model (independent of the volume)
    seconds: Samples
    rss: Samples
    stages: dict[str, Samples]
    timeouts: int = 0
    slices: int = 0


def quick_model(folder: Path) -> Path:
    """A copy of the bundled model that claims 32² input (smoke tests only)."""
    from bonect.demo import bundled_model

    target = folder / "quick-model"
    shutil.copytree(bundled_model(), target, dirs_exist_ok=True)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["input_size"] = QUICK_INPUT
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def run_child(argv: list[str], timeout: float) -> dict[str, Any] | None:
    try:
        done = subprocess.run(
            [sys.executable, __file__, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"child {argv} failed:\n{done.stderr[-4000:]}")
    return load_json(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, smoke test only")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="", help="comma-separated matrices (default: all)")
    parser.add_argument("--cases", default="classical,unet-1,unet-3")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument(
        "--precision", default="auto", help="the forward's arithmetic, as [converter] precision"
    )
    # the child's arguments
    parser.add_argument("--child", dest="case", default="")
    parser.add_argument("--series", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(child(args)))
        return 0

    from bonect.demo import bundled_model

    specs = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        specs = {int(s): specs[int(s)] for s in args.sizes.split(",")}
    cases = [c for c in args.cases.split(",") if c]
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="convert-", dir=CACHE))
    model = quick_model(work) if args.quick else bundled_model()
    common = ["--model", str(model), "--threads", str(args.threads), "--precision", args.precision]
    folders = {size: series_folder(spec) for size, spec in specs.items()}
    results: dict[tuple[str, int | None], Case] = {}
    plan: list[tuple[str, int | None]] = [(c, s) for s in specs for c in cases]
    plan += [(b, None) for b in ("bare-1", "bare-3") if f"unet-{b[-1]}" in cases]
    try:
        for run in range(args.runs):
            for case, size in plan:
                key = (case, size)
                entry = results.setdefault(key, Case(case, size, Samples(), Samples(), {}))
                extra = (
                    []
                    if size is None
                    else ["--series", str(folders[size]), "--out", str(work / f"out-{case}")]
                )
                print(
                    f"run {run + 1}/{args.runs}: {case} {size or ''}", file=sys.stderr, flush=True
                )
                got = run_child(["--child", case, *common, *extra], args.timeout)
                if got is None:
                    entry.timeouts += 1
                    continue
                entry.seconds.add(got["seconds"])
                entry.rss.add(got["maxrss_mb"])
                entry.slices = got.get("slices", 0)
                for stage, seconds in got.get("stages", {}).items():
                    entry.stages.setdefault(stage, Samples()).add(seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    publish(
        "convert" + ("-quick" if args.quick else ""),
        report(results, specs, args),
    )
    return 0


def report(
    results: dict[tuple[str, int | None], Case],
    specs: dict[int, SeriesSpec],
    args: argparse.Namespace,
) -> str:
    bare = {c.case[-1]: c for c in results.values() if c.size is None}
    rows, stage_rows = [], []
    stage_names = ["read", "prepare", "forward", "fuse", "from cube", "classical", "write"]
    for (case, size), c in results.items():
        if size is None:
            continue
        spec = specs[size]
        label = f"{spec.matrix}×{spec.matrix}×{spec.slices}"
        if not c.seconds.values:
            rows.append([label, case, f"> {args.timeout:.0f} s (timed out)", "-", "-", "-", "-"])
            continue
        ratio: object = "-"
        slices_s: object = "-"
        if case.startswith("unet"):
            b = bare[case[-1]]
            slices_s = c.slices / c.seconds.median
            ratio = f"{b.seconds.median / c.seconds.median:.2f} " + verdict(
                b.seconds.median / c.seconds.median, 0.8
            )
        rss = f"{c.rss.median / 1024:.2f}"
        if spec.matrix == 512 and not args.quick:
            rss += " " + verdict(c.rss.median / 1024, 4.0, at_least=False)
        timeouts = f" ({c.timeouts} timed out)" if c.timeouts else ""
        rows.append(
            [
                label,
                case,
                f"{c.seconds.median:.2f}{timeouts}",
                slices_s,
                ratio,
                rss,
                c.seconds.spread(),
            ]
        )
        stage_rows.append(
            [label, case]
            + [f"{c.stages[s].median:.2f}" if s in c.stages else "" for s in stage_names]
        )
    for _key, b in sorted(bare.items()):
        if b.seconds.values:
            rows.append(
                [
                    "(model input²)",
                    b.case,
                    f"{b.seconds.median:.2f}",
                    b.slices / b.seconds.median,
                    "ceiling",
                    f"{b.rss.median / 1024:.2f}",
                    b.seconds.spread(),
                ]
            )
    text = [
        header(
            "Conversion" + (" (quick: 32² model input, smoke test only)" if args.quick else ""),
            command_line(),
        ),
        "",
        f"Median of {args.runs} runs, each case in its own process; batch {BATCH}, CPU, "
        f"torch threads {args.threads or 'default'}, precision {args.precision} "
        "(pipeline and bare alike). "
        "slices/s = slices forwarded (planes × model input size) / seconds per volume; "
        "ratio = bare seconds / pipeline seconds.",
        "",
        table(
            [
                "volume",
                "case",
                "s / volume",
                "slices/s",
                "ratio to bare (target ≥ 0.8)",
                "peak RSS GB",
                "min-max s",
            ],
            rows,
        ),
        "",
        "Where the time goes (median seconds per stage; forward = predict_plane, fuse = "
        "median and spread over planes):",
        "",
        table(["volume", "case", *stage_names], stage_rows),
    ]
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
