"""Rerun the quick claims as another machine would, and with a broken Lookahead.

Command line (from the repository root)::

    python -m experiments.reproduce.robustness                     # every variant, classifier claims
    python -m experiments.reproduce.robustness --experiments all   # every quick experiment
    python -m experiments.reproduce.robustness --variants onednn_off init_ulp

Each variant runs in its own interpreter (two at a time), because some
perturbations are environment variables that the kernels read once, at start:

- machine perturbations, under which every claim must still hold: another
  vector code path of ATen (``ATEN_CPU_CAPABILITY``: none, or AVX2 as on an
  AVX2-only CPU, with oneDNN capped to AVX2 too), oneDNN off
  (``torch.backends.mkldnn``), two intra-op threads, MKL's conservative code
  path with two BLAS/OpenMP threads (``MKL_CBWR=COMPATIBLE``), and every
  initial weight of the CNN classifiers moved up by one ulp (the LSTMs keep theirs);
- broken Lookahead variants, each of which must fail at least one claim: the
  fast weights not reset to φ at a sync, the slow weights never moved (θ is
  reset to the initial weights every k steps), and α applied as 1 − α.

The last one is a check on the check: at α = 0.5, 1 − α = α, so every run
at α = 0.5 is unchanged, bit for bit, and the k × α grid turns α = 0.8 into 0.2
while claiming insensitivity to α; no claim *can* see that fault (measured: 4
of 158 runs changed, every claim held). The closed-form test of eq. (0.1) in
the conformance suite catches it. The report shows the variant rather than
hiding it.

Output: one Markdown table (variant × claim) on stdout, and with ``--json`` the
per-claim verdicts and every run's record; the table counts, per variant, the runs whose
record differs
from the unperturbed rerun (a perturbation that changes nothing proves nothing).
Exit status 0 when every machine perturbation keeps every claim and every
broken variant but the α one fails one, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER_EXPERIMENTS = ("lr_sweep", "figure9", "figure10")
ALL_EXPERIMENTS = ("table1", "lr_sweep", "figure9", "figure10", "table3")


class Variant(NamedTuple):
    """One rerun: environment variables for its interpreter and in-process switches.

    Attributes:
        name: short id.
        description: what it mimics or breaks.
        env: environment variables set before torch is imported.
        threads: torch intra-op threads.
        onednn: whether oneDNN (mkldnn) kernels are enabled.
        init_ulp: move every initial weight of the CNN classifiers up by one ulp.
        broken: the name of a broken sync (`BROKEN_SYNCS`), or ``""``.
    """

    name: str
    description: str
    env: dict[str, str] = {}
    threads: int = 1
    onednn: bool = True
    init_ulp: bool = False
    broken: str = ""

    @property
    def is_broken(self) -> bool:
        return bool(self.broken)


VARIANTS = {
    v.name: v
    for v in (
        Variant("reference", "this machine, unperturbed"),
        Variant("aten_default", "ATen's scalar kernels, no SIMD (another CPU's code path)",
                env={"ATEN_CPU_CAPABILITY": "default"}),
        Variant("isa_avx2", "an AVX2-only CPU: ATen and oneDNN capped to AVX2",
                env={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
        Variant("onednn_off", "oneDNN off (torch.backends.mkldnn.enabled = False)", onednn=False),
        Variant("threads_2", "two torch intra-op threads", threads=2),
        Variant("blas_compatible_2", "MKL's conservative code path, two BLAS/OpenMP threads",
                env={"MKL_CBWR": "COMPATIBLE", "MKL_NUM_THREADS": "2", "OMP_NUM_THREADS": "2",
                     "OPENBLAS_NUM_THREADS": "2"}),
        Variant("init_ulp", "every initial weight of the CNN one ulp up", init_ulp=True),
        Variant("broken_no_reset", "broken: θ not reset to φ at a sync", broken="no_reset"),
        Variant("broken_frozen_slow", "broken: φ never moves, θ ← φ every k steps",
                broken="frozen_slow"),
        Variant("broken_alpha_flipped", "broken: α applied as 1 − α (invisible at α = 0.5)",
                broken="alpha_flipped"),
    )
}
MACHINE_VARIANTS = tuple(name for name, v in VARIANTS.items() if not v.is_broken)
BROKEN_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.is_broken)
# Broken variants no claim can tell from the real thing at the quick size's α = 0.5.
UNDETECTABLE = frozenset({"broken_alpha_flipped"})


# ----------------------------------------------------------------------- in the worker


def _broken_sync(name: str) -> Callable[..., None]:
    """A wrong replacement for `lookahead_torch._kernels.lerp_and_copy_` (same signature)."""
    import torch

    @torch.no_grad()
    def no_reset(fast, slow, alpha, scratch=None) -> None:
        torch._foreach_lerp_(list(slow), list(fast), alpha)  # φ moves, θ keeps its own path

    @torch.no_grad()
    def frozen_slow(fast, slow, alpha, scratch=None) -> None:
        torch._foreach_copy_(list(fast), list(slow))  # θ ← φ₀ every k steps

    @torch.no_grad()
    def alpha_flipped(fast, slow, alpha, scratch=None) -> None:
        torch._foreach_lerp_(list(slow), list(fast), 1.0 - alpha)
        torch._foreach_copy_(list(fast), list(slow))

    return {"no_reset": no_reset, "frozen_slow": frozen_slow, "alpha_flipped": alpha_flipped}[name]


def _apply_in_process(variant: Variant) -> None:
    import torch

    from lookahead_torch import _kernels

    from . import training

    torch.backends.mkldnn.enabled = variant.onednn
    if variant.init_ulp:
        original = training.new_classifier

        def new_classifier(data, channels, seed):
            model = original(data, channels, seed)
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
            return model

        training.new_classifier = new_classifier
    if variant.broken:
        _kernels.lerp_and_copy_ = _broken_sync(variant.broken)


def run_variant(variant: Variant, experiments: Sequence[str]) -> dict[str, Any]:
    """Run ``experiments`` at the quick size under ``variant`` in this process; claims and accuracies."""
    from . import claims, runner

    _apply_in_process(variant)
    verdicts, outcomes = [], {}
    for name in experiments:
        results = runner.run_experiment(name, "quick", None, progress=False, threads=variant.threads)
        verdicts += [claim._asdict() for claim in claims.evaluate(name, results)]
        # Every run's record (accuracies, losses, curves) as one string: what "changed" compares.
        outcomes[name] = [json.dumps(run, sort_keys=True) for run in results["runs"]]
    return {"variant": variant.name, "claims": verdicts, "outcomes": outcomes}


# ----------------------------------------------------------------------- the driver


def _run_in_subprocess(variant: Variant, experiments: Sequence[str]) -> dict[str, Any]:
    env = {**os.environ, **variant.env, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "experiments.reproduce.robustness", "--worker", variant.name,
               "--experiments", *experiments]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"variant {variant.name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def changed_runs(reference: dict[str, Any], other: dict[str, Any]) -> int:
    """How many runs' recorded outcomes differ between two variants' reruns."""
    return sum(a != b for name in reference["outcomes"]
               for a, b in zip(reference["outcomes"][name], other["outcomes"].get(name, [])))


def verdict(results: dict[str, dict[str, Any]]) -> list[str]:
    """What is wrong with a set of variant results: a machine variant with a failing claim,
    or a detectable broken variant that passes every claim. Empty when all is as it should be."""
    problems = []
    for name, result in results.items():
        failed = [c["name"] for c in result["claims"] if not c["holds"]]
        if not VARIANTS[name].is_broken and failed:
            problems.append(f"{name}: claims failed under a machine perturbation: {failed}")
        if VARIANTS[name].is_broken and name not in UNDETECTABLE and not failed:
            problems.append(f"{name}: a broken Lookahead passed every claim")
    return problems


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """Variant × claim table: ✓ holds, ✗ fails, with the changed-run counts."""
    names = list(results)
    claim_names = [c["name"] for c in results[names[0]]["claims"]]
    reference = results.get("reference")
    header = ["claim", *names]
    rows = [header, ["---"] * len(header)]
    for i, claim_name in enumerate(claim_names):
        rows.append([claim_name] + ["✓" if results[n]["claims"][i]["holds"] else "✗" for n in names])
    if reference is not None:
        rows.append(["runs changed vs reference"] + [str(changed_runs(reference, results[n])) for n in names])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def run_all(variant_names: Sequence[str], experiments: Sequence[str], workers: int = 2
            ) -> dict[str, dict[str, Any]]:
    """Every variant in its own interpreter, ``workers`` at a time."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(_run_in_subprocess, VARIANTS[name], experiments)
                   for name in variant_names}
        return {name: future.result() for name, future in futures.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.reproduce.robustness",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--experiments", nargs="+", choices=[*ALL_EXPERIMENTS, "all"],
                        default=list(CLASSIFIER_EXPERIMENTS))
    parser.add_argument("--workers", type=int, default=2, help="variants run at once (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="write every verdict here")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    experiments = list(ALL_EXPERIMENTS) if "all" in args.experiments else args.experiments
    if args.worker:
        print(json.dumps(run_variant(VARIANTS[args.worker], experiments)))
        return 0
    results = run_all(args.variants, experiments, args.workers)
    print(markdown(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    problems = verdict(results)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
