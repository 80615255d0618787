"""Time one sweep point end to end: sampling, then evaluation against a prepared reference.

    OMP_NUM_THREADS=2 python benchmarks/sweep_point.py --data-root /work/shared/data --dataset mnist-lt

The network is the quickstart U-Net with random weights (timing only; the numbers it scores
mean nothing). A classifier feature extractor is trained for one epoch when none is given.
Rows: the once-per-sweep reference preparation (cold: features and radii computed; warm:
read from the cache), the point's sampling, and each part of its evaluation; the last line
is the evaluation overhead as a share of the sampling time (target: <= 10%).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from train_step import cpu_model  # the same CPU line in every benchmark table




def _run(workdir: Path, dataset: str, data_root: Path):
    """An untrained quickstart-size run for ``dataset`` (written as a checkpoint, then loaded)."""
    from cbdm_core.build import build_model
    from cbdm_core.checkpoint import Checkpoint, save_checkpoint
    from cbdm_core.config import TrainConfig
    from cbdm_core.data import dataset_options, load_dataset
    from cbdm_core.run import load_run

    train = load_dataset(dataset, dataset_options(root=data_root, split="train"))
    cfg = TrainConfig.model_validate({
        "model": {"backbone": "unet", "options": {"ch": 32, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1,
                                                  "dropout": 0.0, "num_groups": 8}},
        "data": {"dataset": dataset, "root": str(data_root)}, "objective": {"p_uncond": 0.1}})
    torch.manual_seed(0)
    model = build_model(cfg, image_size=train.image_size, channels=train.channels, num_classes=train.num_classes)
    sd = model.state_dict()
    meta = {"num_classes": train.num_classes, "image_size": train.image_size, "channels": train.channels,
            "dataset": dataset, "cond_dim": 0, "class_names": train.class_names,
            "class_counts": train.class_counts.tolist()}
    path = workdir / "run" / "checkpoints" / "ckpt-00000000.safetensors"
    save_checkpoint(path, Checkpoint(step=0, config=cfg.model_dump(mode="json"), model=sd,
                                     ema={k: v.clone() for k, v in sd.items()}, meta=meta))
    return load_run(workdir / "run", ema=True, device="cpu"), train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist-lt")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--num", type=int, default=1000, help="images per point")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps (the sweep default)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--metrics", default="fid,is,kid,precision_recall,density_coverage,per_class,memorization")
    p.add_argument("--reference-split", default="train", choices=["train", "test"])
    p.add_argument("--classifier", type=Path, help="feature classifier (default: train one for 1 epoch)")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    args = p.parse_args()

    from cbdm_core.build_evaluation import resolve_evaluation
    from cbdm_core.evaluation import EvalOptions, evaluate, prepare_reference
    from cbdm_core.features import save_classifier, train_classifier
    from cbdm_core.sampling.api import resolve_sampling
    from cbdm_core.sampling.generate import generate_samples
    from cbdm_core.sampling.settings import SamplingSettings
    from cbdm_core.sampling.plan import plan_labels

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cbdm-sweep-point-"))
    run, train = _run(workdir, args.dataset, args.data_root)
    clf = args.classifier
    if clf is None:
        clf = workdir / "clf.safetensors"
        model = train_classifier(train.images, train.labels, train.num_classes, epochs=1, batch_size=256, lr=2e-3,
                                 balanced=True, seed=0, device=torch.device("cpu"))
        save_classifier(model, clf, {"dataset": args.dataset})
    options = EvalOptions(dataset=args.dataset, data_root=args.data_root, extractor="classifier", classifier=clf,
                          metrics=args.metrics.split(","), cache_dir=workdir / "cache", device="cpu",
                          reference_split=args.reference_split)
    rows: list[tuple[str, float]] = []

    t = time.perf_counter()
    components = resolve_evaluation(options)
    prepare_reference(options, components)
    rows.append(("reference, cold (once per sweep, then cached on disk)", time.perf_counter() - t))
    t = time.perf_counter()
    reference = prepare_reference(options, components)
    rows.append(("reference, warm (once per sweep)", time.perf_counter() - t))

    labels = plan_labels("balanced", args.num, run.num_classes, run.meta.class_counts)
    t = time.perf_counter()
    settings = SamplingSettings(sampler="ddim", steps=args.steps, guidance=args.guidance, seed=0,
                                batch_size=args.batch_size, classes="balanced", ema=True)
    generate_samples(run, labels, out_dir=workdir / "samples", sampling=resolve_sampling(settings))
    sampling = time.perf_counter() - t
    rows.append((f"sampling {args.num} images, DDIM-{args.steps}, w={args.guidance:g}", sampling))

    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    evaluate(workdir / "samples", options, components=components, reference=reference,
             on_status=lambda msg: marks.append((msg, time.perf_counter())))
    total = time.perf_counter() - t0
    marks.append(("end", t0 + total))
    first_load = marks[0][1] - t0 if marks else total
    rows.append(("  evaluation: read samples", first_load))
    for (msg, start), (_, end) in zip(marks, marks[1:]):
        rows.append((f"  evaluation: {msg}", end - start))
    rows.append(("evaluation of the point, total", total))
    # first point's extra cost: the memorisation training set (features cached on disk)
    t = time.perf_counter()
    evaluate(workdir / "samples", options, components=components, reference=reference)
    rows.append(("evaluation of a later point (training set already loaded)", time.perf_counter() - t))

    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.dataset}: {len(reference.images)} reference images, {len(train)} training images; "
          f"metrics {args.metrics}")
    print()
    print("| phase | seconds | % of sampling |")
    print("|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {100 * sec / sampling:.1f}% |")
    print()
    print(f"evaluation overhead of a later point: {100 * rows[-1][1] / sampling:.1f}% of its sampling time")


if __name__ == "__main__":
    main()
