"""What must exist before anything trains: the data files, the Inception weights, the Ray launcher."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from st_sweeps.experiment import ExperimentConfig
from st_sweeps.reproduce.launch import Launch
from st_sweeps.reproduce.scaling import has_fid


def inception_weights_status() -> tuple[bool, str]:
    """(available, the weights file or why there is none), as the FID evaluation will see it."""
    from st_sweeps.fid import INCEPTION_WEIGHTS_ENV, inception_weights_path
    from st_sweeps.fid import missing_weights_message, resolve_weights_path

    given = inception_weights_path()
    missing = missing_weights_message(given)
    if missing is not None:
        how = f" (${INCEPTION_WEIGHTS_ENV} is {given})" if given else \
            f" Here: set ${INCEPTION_WEIGHTS_ENV} to the weights file, or copy it to torch-fidelity's cache."
        return False, missing.removeprefix("FID not computed: ") + how
    return True, str(resolve_weights_path(given))


def missing_data(dataset: str, root: Path, scale: str, release: str | None = None) -> list[str]:
    """Problems with the data files under ``root``: at paper scale every file is counted against
    ``st_sweeps.data.prepare``'s expectations; at smoke scale the files must only exist.
    ``release``: the data set's ``source`` field where it has several releases (ImageNet32)."""
    from st_sweeps.data import prepare

    source = prepare.select(dataset, release)
    if scale == "paper":
        _, problems = prepare.check(source, root)
    else:
        problems = [f"missing  {root / f.path}" for f in source.files if not (root / f.path).exists()]
    if problems:
        problems.append(source.manual.format(root=root))
    return problems


def preflight(dataset: str, data_root: Path, scale: str, configs: Iterable[ExperimentConfig], fid_ok: bool,
              weights_status: str, launch: Launch) -> list[str]:
    """Everything that would stop a run part-way, checked before the first step: data files, the
    Inception weights (paper scale), the Ray launcher (workers > 1)."""
    configs = list(configs)
    releases = sorted({getattr(c.data.dataset, "source", None) for c in configs} - {None})
    problems = [p for release in (releases or [None]) for p in missing_data(dataset, data_root, scale, release)]
    if problems:
        problems.append(f"`python reproductions/{dataset}.py --prepare` downloads what has an official download "
                        "(CIFAR-10, STL-10, ImageNet32's npz release; $ST_SWEEPS_MIRROR for a mirror) and checks "
                        "the rest.")
    if scale == "paper" and not fid_ok and any(has_fid(c) for c in configs):
        problems.append(f"FID at paper scale needs the Inception weights: {weights_status} "
                        f"(--prepare downloads them where there is internet)")
    if launch.use_ray:
        try:
            import st_sweeps.ray_train  # noqa: F401
        except ImportError as e:
            problems.append(f"--workers {launch.workers} needs st_sweeps.ray_train, which cannot be imported "
                            f"({e}); use --workers 1 or --local")
    return problems
