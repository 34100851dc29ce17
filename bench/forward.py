"""The fastest forward this machine has: the bundled U-Net's forward, one way after another.

Issue 15 item 3: try what PyTorch and its neighbours offer for the same network on the same
input, and keep what is faster at equal output. Ways (each skipped, with the reason, where
this machine or environment lacks it):

* ``float32``: eager, contiguous input;
* ``float32 channels-last``: eager, channels-last input (what the converter did before);
* ``bfloat16``: eager, channels-last, ``torch.autocast("cpu", bfloat16)`` (oneDNN; fast only
  on a CPU with AVX512-BF16 or AMX);
* ``compile``: ``torch.compile`` (inductor) of the float32 network, and ``compile bfloat16``;
* ``onnxruntime``: the network exported to ONNX, run by ONNX Runtime's CPU provider (only when
  ``onnxruntime`` is installed: it is not a dependency of bonect).

Input: the axial slices of a phantom patient's MR in the model cube (what the converter
forwards), in batches of 16. Rounds interleave the ways so that load from other processes hits
each alike; slices/s is the median over rounds, and the ratio to float32 channels-last the
median of each round's ratio. Output: max and mean |ΔHU| of each way against float32 on every
slice.

    python bench/forward.py [--rounds 5] [--threads N] [--no-compile]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import Samples, command_line, header, median, publish, table

BATCH = 16
Forward = Callable[[torch.Tensor], torch.Tensor]
Cast = Callable[[], AbstractContextManager[Any]]


def phantom_slices(size: int) -> torch.Tensor:
    """The axial slices of one phantom patient's MR in the model cube, (N, 1, size, size)."""
    from bonect.converter.preprocess import prepare, slices
    from bonect.phantom.generate import generate_case

    case = generate_case(2026, 0, ct_acquisition=None)
    cube = prepare(case.mr, size)
    return torch.from_numpy(np.ascontiguousarray(slices(cube.image, "axial")))[:, None]


def autocast_bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def ways(network: torch.nn.Module, sample: torch.Tensor, *, compile_too: bool) -> dict[str, Any]:
    """Each way's forward (channels-last input where it helps), or why it is skipped."""
    from bonect.converter.inference import cpu_computes_bfloat16

    def eager(cast: Cast, memory: torch.memory_format) -> Forward:
        def forward(x: torch.Tensor) -> torch.Tensor:
            with cast():
                return network(x.contiguous(memory_format=memory)).float()

        return forward

    found: dict[str, Any] = {
        "float32": eager(nullcontext, torch.contiguous_format),
        "float32 channels-last": eager(nullcontext, torch.channels_last),
    }
    found["bfloat16"] = (
        eager(autocast_bf16, torch.channels_last)
        if cpu_computes_bfloat16()
        else "skipped: this CPU has no native bfloat16 (emulated, slower)"
    )
    if compile_too:
        compiled = torch.compile(network)

        def compiled_way(cast: Cast) -> Forward:
            def forward(x: torch.Tensor) -> torch.Tensor:
                with cast():
                    return compiled(x.contiguous(memory_format=torch.channels_last)).float()

            return forward

        found["compile"] = compiled_way(nullcontext)
        found["compile bfloat16"] = compiled_way(autocast_bf16)
    else:
        found["compile"] = "skipped (--no-compile)"
    if importlib.util.find_spec("onnxruntime") is None:
        found["onnxruntime"] = "skipped: onnxruntime is not installed (pip install onnxruntime)"
    else:
        found["onnxruntime"] = onnx_way(network, sample)
    return found


def onnx_way(network: torch.nn.Module, sample: torch.Tensor) -> Forward:
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp(prefix="bonect-forward-")) / "network.onnx"
    torch.onnx.export(
        network,
        (sample.contiguous(),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        (y,) = session.run(None, {"x": x.contiguous().numpy()})
        return torch.from_numpy(y)

    return forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from bonect.converter.model_folder import load_model
    from bonect.demo import bundled_model

    model = load_model(bundled_model(), precision="float32")
    network = model.network.eval()
    to_hu = model.manifest.to_hu
    stack = phantom_slices(model.manifest.input_size)
    batches = list(torch.split(stack, BATCH))
    found = ways(network, batches[0], compile_too=not args.no_compile)
    runnable = {name: way for name, way in found.items() if callable(way)}
    warm_seconds: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for name, way in runnable.items():  # first call (compilation, export) and the output
            started = time.perf_counter()
            way(batches[0])
            warm_seconds[name] = time.perf_counter() - started
            outputs[name] = torch.cat([to_hu(way(b)) for b in batches])
            print(f"warmed {name} in {warm_seconds[name]:.1f} s", file=sys.stderr, flush=True)
        speed = {name: Samples() for name in runnable}
        timed = batches[: max(1, min(len(batches), 4))]
        for round_ in range(args.rounds):
            for name, way in runnable.items():
                started = time.perf_counter()
                for batch in timed:
                    way(batch)
                speed[name].add(sum(len(b) for b in timed) / (time.perf_counter() - started))
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
    reference = outputs["float32"]
    base = speed["float32 channels-last"].values
    rows: list[list[object]] = []
    for name, way in found.items():
        if not callable(way):
            rows.append([name, "-", "-", "-", "-", "-", way])
            continue
        diff = (outputs[name] - reference).abs()
        rows.append(
            [
                name,
                f"{speed[name].median:.1f}",
                f"{median([v / b for v, b in zip(speed[name].values, base, strict=True)]):.2f}",
                f"{diff.max().item():.2f}",
                f"{diff.mean().item():.3f}",
                f"{warm_seconds[name]:.1f}",
                speed[name].spread(),
            ]
        )
    text = [
        header("The forward, one way after another", command_line()),
        "",
        f"Bundled Light_U-Net at {model.manifest.input_size}², batch {BATCH}, "
        f"{len(stack)} axial slices of a phantom MR in the model cube; "
        f"torch threads {torch.get_num_threads()}, {args.rounds} interleaved rounds. "
        "ratio = median over rounds of the round's slices/s over float32 channels-last's "
        "(load drifts between rounds, less within one); |ΔHU| against float32 on every slice.",
        "",
        table(
            [
                "way",
                "slices/s",
                "ratio",
                "max |ΔHU|",
                "mean |ΔHU|",
                "first call s",
                "range of slices/s, or why skipped",
            ],
            rows,
        ),
    ]
    publish("forward", "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
