"""Training: slices/s of a training epoch against the bare forward + backward of the model.

Data: phantom patients (bone MR and the CT on its grid, NIfTI) cached by
:func:`bonect.trainer.cache.build_cache` at the benchmark's size (built once, reused by key).
Cases, each in its own child process, interleaved in every run:

* ``epoch``: :func:`bonect.trainer.training.train` for two epochs (Light_U-Net, L1, Adam,
  augmentation on, CPU); the rate is the second epoch record's ``slices_per_second`` (training
  slices over the training pass: gathering from the memory maps, augmentation, forward,
  backward, optimiser step; validation is not in it). The first epoch carries one-time costs
  (oneDNN primitives, Adam's state) that a real run spreads over many epochs;
* ``bare``: the same network, channels-last, on a random batch already in memory: forward, L1
  loss, backward and Adam step, as many steps as the epoch has batches, after one warm step.

Target: epoch slices/s ≥ 0.9x bare slices/s (the input never starves the model).

    python bench/train.py [--quick] [--runs 3] [--size 64] [--batch 16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CACHE, Samples, command_line, header, load_json, publish, table, verdict

PATIENTS = 3
SEED = 31


def pair_sources(patients: int) -> list[Any]:
    """Phantom pairs as NIfTI, written once under the bench cache."""
    from bonect.phantom.cohort import patient_id, write_patient
    from bonect.phantom.generate import Acquisition, generate_case
    from bonect.trainer.cache import PairSource

    root = CACHE / "train-pairs"
    sources = []
    for index in range(patients):
        folder = root / patient_id(SEED, index)
        if not (folder / "done").is_file():
            case = generate_case(
                SEED, index, acquisition=Acquisition("axial", (2.0, 1.5, 1.5)), ct_acquisition=None
            )
            write_patient(case, SEED, root)
            (folder / "done").write_text("")
        sources.append(
            PairSource(
                key=f"bench/{folder.name}",
                patient_key=folder.name,
                mr=folder / "mr.nii.gz",
                ct=folder / "ct.nii.gz",
            )
        )
    return sources


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bonect.trainer.cache import SliceIndex, build_cache
    from bonect.trainer.training import TrainingOptions, split_patients, train

    pairs = build_cache(
        CACHE / "slice-cache", pair_sources(args.patients), args.size, progress=False
    )
    options = TrainingOptions(
        batch_size=args.batch,
        max_epochs=2,
        device="cpu",
        arguments={"base_filters": 16, "levels": 5},
        seed=SEED,
    )
    split = split_patients(pairs, SliceIndex(pairs), options.validation_fraction, options.seed)
    steps = len(split.train) // args.batch
    result: dict[str, Any] = {
        "case": args.child,
        "threads": torch.get_num_threads(),
        "train_slices": len(split.train),
    }
    if args.child == "epoch":
        CACHE.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
        try:
            trained = train(pairs, options, run_dir, progress=False, resume=False)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        record = trained.history[-1]
        result.update(slices_per_second=record.slices_per_second, epoch_seconds=record.seconds)
    else:
        from bonect.converter.networks import build_model

        torch.manual_seed(SEED)
        network = build_model("light_unet", options.arguments)
        network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        network.train()
        optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
        shape = (args.batch, 1, args.size, args.size)
        x = torch.rand(shape).contiguous(memory_format=torch.channels_last)
        y = torch.rand(shape).contiguous(memory_format=torch.channels_last)

        def step() -> None:
            loss = torch.nn.functional.l1_loss(network(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()

        step()  # warm
        started = time.perf_counter()
        for _ in range(steps):
            step()
        result["slices_per_second"] = steps * args.batch / (time.perf_counter() - started)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="32² and tiny epochs, smoke test")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="model input size (multiple of 16)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patients", type=int, default=PATIENTS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--child", default="")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if args.quick:
        args.size, args.batch, args.patients = 32, 8, 2
    import subprocess

    shared = [
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--patients",
        str(args.patients),
        "--threads",
        str(args.threads),
    ]
    samples = {"epoch": Samples(), "bare": Samples()}
    epoch_seconds = Samples()
    train_slices = 0
    for run in range(args.runs):
        for case in ("epoch", "bare") if run % 2 == 0 else ("bare", "epoch"):
            print(f"run {run + 1}/{args.runs}: {case}", file=sys.stderr, flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "--child", case, *shared],
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{case} failed:\n{done.stderr[-4000:]}")
            got = load_json(done.stdout)
            samples[case].add(got["slices_per_second"])
            train_slices = got["train_slices"]
            if case == "epoch":
                epoch_seconds.add(got["epoch_seconds"])
    ratio = samples["epoch"].median / samples["bare"].median
    rows = [
        [
            "training epoch (`train`)",
            f"{samples['epoch'].median:.2f}",
            f"{ratio:.2f} " + verdict(ratio, 0.9),
            samples["epoch"].spread(),
        ],
        [
            "bare forward + backward + Adam step",
            f"{samples['bare'].median:.2f}",
            "1.00",
            samples["bare"].spread(),
        ],
    ]
    text = "\n".join(
        [
            header(
                "Training" + (" (quick: smoke test only)" if args.quick else ""), command_line()
            ),
            "",
            f"Light_U-Net at {args.size}², batch {args.batch}, CPU, torch threads "
            f"{args.threads or 'default'}; {train_slices} training slices "
            f"of {args.patients} phantom patients (one held out for validation). Median of "
            f"{args.runs} runs; "
            f"second epoch's wall time with validation {epoch_seconds.median:.1f} s.",
            "",
            table(["case", "slices/s", "ratio to bare (target ≥ 0.9)", "min-max slices/s"], rows),
        ]
    )
    publish("train" + ("-quick" if args.quick else ""), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
