"""digits_fd: the classifier's accuracy, the metric's noise floor, and its sanity under blur and noise.

``st_sweeps.digits_fd`` is a Fréchet distance (and KID) in the features of a small CNN trained on
the embedded digits' training split; the reference set is that training split (1,500 images).
This script measures what a study needs to read its numbers:

1. the classifier: its training and held-out test accuracy (and how long training took);
2. the noise floor: the distance between two halves of the test split (the fixed halves, then
   random halvings), and the spread (mean ± std over seeds) of the distance of real-digit sets of
   the sizes a study uses (256, 512) to the reference: drawn from train + test, from the training
   split only (memorised images), from the test split only (held-out writers);
3. the sanity: the distance as a set of real digits (512 from train + test; the test split) is
   blurred (Gaussian, σ in pixels) or noised (Gaussian, std in [0, 1] grey units), which should
   grow monotonically; ``eval/pixel_fd`` on the same sets for comparison, and each level's
   distance in units of the n = 512 floor's std.

No timing comparison: absolute seconds are printed for information only.

    python -m benchmarks.digits_fd --quick
    python -m benchmarks.digits_fd --append          # full size (10 seeds), appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from benchmarks.common import Section, add_common_args, command_line, emit, fmt, markdown_table, mode_of, set_threads
from st_sweeps import digits_fd as dfd
from st_sweeps.fid import pixel_frechet_distance

MODULE = "benchmarks.digits_fd"
SIZES = {  # seeds per floor row, KID subsets per distance (torch-fidelity's default is 100)
    "smoke": {"seeds": 2, "kid_subsets": 5, "blur": (0.0, 1.0), "noise": (0.0, 0.3)},
    "quick": {"seeds": 5, "kid_subsets": 20, "blur": (0.0, 0.5, 0.75, 1.0, 1.5, 2.0),
              "noise": (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)},
    "full": {"seeds": 10, "kid_subsets": 100, "blur": (0.0, 0.5, 0.75, 1.0, 1.5, 2.0),
             "noise": (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)},
}


def mean_std(xs: Sequence[float]) -> str:
    if len(xs) == 1:
        return fmt(xs[0])
    return f"{fmt(statistics.fmean(xs))} ± {fmt(statistics.stdev(xs), 2)}"


def draw(pool: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]


def run(args: argparse.Namespace) -> Section:
    mode = mode_of(args)
    size = SIZES[mode]
    set_threads(args.threads)
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="digits_fd_bench_"))
    train, _ = dfd.digits_split("train")
    test, test_labels = dfd.digits_split("test")
    both = torch.cat([train, test])

    t0 = time.perf_counter()
    fresh = not (cache / f"digits-classifier-{dfd.cache_key()}.pt").is_file()
    path = dfd.classifier_path(cache)
    train_s = time.perf_counter() - t0
    _, info = dfd.load_classifier(path)
    calls: list[float] = []

    def score(x: torch.Tensor, ref: torch.Tensor | None = None) -> tuple[float, float, float]:
        t = time.perf_counter()
        res = dfd.digits_fd(x, ref, cache_dir=cache, kid_subsets=size["kid_subsets"])
        calls.append(time.perf_counter() - t)
        return res.value, res.kid, pixel_frechet_distance(x, train if ref is None else ref)

    spec = info["spec"]
    classifier = markdown_table(
        ["classifier", "features", "train accuracy", "test accuracy (297 held-out digits)", "training"],
        [[f"CNN width {spec.width}, {spec.epochs} epochs, Adam lr {spec.lr:g}, dropout {spec.dropout:g}, "
          f"±{spec.max_shift} px shifts, seed {spec.seed}", spec.features, f"{info['train_accuracy']:.4f}",
          f"{info['test_accuracy']:.4f}", f"{train_s:.1f} s" if fresh else "read from the cache"]])

    seeds = range(size["seeds"])
    half = len(test) // 2
    floor_rows: list[list[object]] = []

    def floor_row(what: str, sizes: str, sets: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]],
                  seed_list: Sequence[int]) -> list[float]:
        vals = [score(*sets(s)) for s in seed_list]
        fds = [v[0] for v in vals]
        floor_rows.append([what, sizes, len(vals), mean_std(fds), mean_std([v[1] for v in vals]),
                           mean_std([v[2] for v in vals])])
        return fds

    floor_row("test split: first half vs second half", f"{half} vs {len(test) - half}",
              lambda s: (test[:half], test[half:]), [0])
    floor_row("test split: random halves", f"{half} vs {len(test) - half}",
              lambda s: (lambda p: (test[p[:half]], test[p[half:]]))(
                  torch.randperm(len(test), generator=torch.Generator().manual_seed(s))), seeds)
    floors: dict[int, list[float]] = {}
    for n in (256, 512):
        floors[n] = floor_row(f"{n} digits from train + test vs the reference", f"{n} vs {len(train)}",
                              lambda s, n=n: (draw(both, n, s), None), seeds)
    floor_row("256 digits from the training split (memorised) vs the reference", f"256 vs {len(train)}",
              lambda s: (draw(train, 256, s), None), seeds)
    floor_row("256 digits from the test split (held-out writers) vs the reference", f"256 vs {len(train)}",
              lambda s: (draw(test, 256, s), None), seeds)
    test_fd = floor_row("the whole test split vs the reference", f"{len(test)} vs {len(train)}",
                        lambda s: (test, None), [0])[0]
    floor = markdown_table(["real digits", "n vs n_ref", "seeds", "digits_fd (mean ± std)", "digits_kid",
                            "pixel_fd"], floor_rows)

    mixed = draw(both, 512, 0)
    sd512 = statistics.stdev(floors[512]) if len(floors[512]) > 1 else float("nan")
    mean512 = statistics.fmean(floors[512])
    sanity_rows = []
    columns: dict[str, list[float]] = {"blur, 512 mixed": [], "blur, test split": [], "noise, 512 mixed": [],
                                       "noise, test split": []}
    for kind, levels in (("blur", size["blur"]), ("noise", size["noise"])):
        for level in levels:
            def degrade(x: torch.Tensor) -> torch.Tensor:
                if kind == "blur":
                    return dfd.gaussian_blur_uint8(x, level)
                return dfd.gaussian_noise_uint8(x, level, torch.Generator().manual_seed(0))

            fd_m, kid_m, px_m = score(degrade(mixed))
            fd_t, _, px_t = score(degrade(test))
            columns[f"{kind}, 512 mixed"].append(fd_m)
            columns[f"{kind}, test split"].append(fd_t)
            sanity_rows.append([kind, f"σ = {level:g} px" if kind == "blur" else f"std = {level:g}", fmt(fd_m),
                                fmt(kid_m), fmt((fd_m - mean512) / sd512, 2), fmt(px_m), fmt(fd_t), fmt(px_t)])
    sanity = markdown_table(["degradation", "level", "digits_fd, 512 from train + test", "digits_kid",
                             "(fd − floor mean) / floor std, n = 512", "pixel_fd", "digits_fd, test split (297)",
                             "pixel_fd, test split"], sanity_rows)

    def monotone(xs: list[float]) -> str:
        return "yes" if all(b > a for a, b in zip(xs, xs[1:])) else "no"

    table = "\n\n".join([classifier, floor, sanity])
    notes = [
        "- Reference: the digits training split (1,500 images), as `eval.sample_quality: digits_fd` uses it. "
        "Features: the classifier's penultimate layer (after ReLU); Fréchet distance and KID (polynomial kernel, "
        f"{size['kid_subsets']} subsets of min(n, n_ref, 1000)) by torch-fidelity "
        f"{_version('torch-fidelity')}.",
        "- Monotonic in the level: " + ", ".join(f"{k}: {monotone(v)}" for k, v in columns.items()) + ".",
        f"- One digits_fd call (features of both sets + Fréchet + KID): median {fmt(statistics.median(calls))} s, "
        f"largest {fmt(max(calls))} s (KID's subsets dominate).",
        f"- The test split (the last {len(test)} digits, other writers) sits at {fmt(test_fd)} from the reference, "
        f"against {fmt(statistics.fmean(floors[256]))} for 256 digits drawn from train + test: a generator that "
        "matched the training distribution exactly would score near the pooled floor, not near the test split.",
    ]
    return Section("digits_fd: classifier accuracy, noise floor and sanity", command_line(MODULE, args.argv),
                   args.threads, table, notes, mode)


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--cache-dir", default=None,
                   help="classifier cache (default: a fresh temporary directory, so the training time is measured)")
    args = p.parse_args(argv)
    args.argv = argv
    emit(run(args), args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
