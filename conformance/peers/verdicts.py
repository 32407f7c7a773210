"""The Verdicts page: the conformance kit on the Lookahead implementations people use.

Two steps, both run by ``make verdicts``:

    python conformance/peers/verdicts.py run --json docs/results/verdicts.json [-- KIT_ARGS]
    python conformance/peers/verdicts.py page docs/results/verdicts.json docs/verdicts.md

``run`` certifies each peer of `PEERS` in its own ``python -m
lookahead_conformance --backend MODULE:backend --json ...`` process (this folder
on ``PYTHONPATH``; KIT_ARGS such as ``--seed`` are passed on), and writes one
JSON file with the date, the versions (peer, array library, Python, kit) and
every result. It also reads, in the installed release, each source line that
`CAUSES` cites, and records whether it still says what the cause quotes.

``page`` turns that JSON into the Markdown page, with the cause of each failure
from `CAUSES`: one line per (peer, check), written after reading the peer's
source. A failure without a recorded cause, a cause recorded for a check that
passed, and a cited line that no longer matches are all printed in the page
and on stderr, and make ``page`` exit with status 1: a new or fixed departure
is noticed at the next run. ``page`` needs only the JSON (no peer installed).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class Peer(NamedTuple):
    """A peer implementation and its backend module in this folder."""

    name: str
    api: str  # what its users call
    backend: str  # module:attr, importable with this folder on sys.path
    distribution: str  # its package on PyPI
    libraries: tuple[str, ...]  # the array library's distributions
    driven: str  # how the backend drives it, for the page
    by_check: tuple[tuple[str, str], ...] = ()  # (check, module:attr) run on another backend


_TORCH_LOOP = ("around `torch.optim.SGD`/`Adam`, gradients set as `p.grad` (the backend checks "
               "their count, shapes and dtypes first, as autograd guarantees them), `step()`, "
               "`zero_grad()`; checkpoints through `torch.save(opt.state_dict())` and "
               "`torch.load(weights_only=True)`; skipped steps by `torch.amp.GradScaler`.")

PEERS = (
    Peer("timm", "timm.optim.Lookahead", "peer_timm:backend", "timm", ("torch",),
         "`Lookahead(inner, alpha=α, k=k)` " + _TORCH_LOOP + " Before its first sync timm has "
         "no slow weights, and the backend shows the parameters as φ. timm's package imports "
         "torchvision, which the benchmark environment lacks (timm is installed `--no-deps`), "
         "so the class is loaded from `timm/optim/lookahead.py`, as the performance suite does."),
    Peer("torch-optimizer", "torch_optimizer.Lookahead", "peer_torch_optimizer:backend",
         "torch-optimizer", ("torch",),
         "`Lookahead(inner, k=k, alpha=α)` " + _TORCH_LOOP + " Before its first sync it has no "
         "slow weights, and the backend shows the parameters as φ."),
    Peer("pytorch_optimizer", "pytorch_optimizer.Lookahead", "peer_pytorch_optimizer:backend",
         "pytorch_optimizer", ("torch",),
         "`Lookahead(inner, k=k, alpha=α)` (default `pullback_momentum='none'`) " + _TORCH_LOOP),
    Peer("optax", "optax.lookahead", "peer_optax:backend", "optax", ("jax", "jaxlib"),
         "`lookahead(inner, sync_period=k, slow_step_size=α)` on "
         "`LookaheadParams.init_synced(params)`, then `tx.update` and `optax.apply_updates`, "
         "eagerly, with `jax_enable_x64` for float64; the inner optimizer is `optax.sgd` / "
         "`adam` / `adamw` with torch's semantics and defaults. Gradients go to optax "
         "unchecked. `skipped_steps` runs on `lookahead(apply_if_finite(inner), ...)`, the one "
         "place optax lets a step be skipped under `lookahead` (`apply_if_finite` cannot wrap "
         "`lookahead` itself); the other checks run without it, as its `lax.cond` would refuse "
         "gradients of another shape or dtype in lookahead's place.",
         by_check=(("skipped_steps", "peer_optax:skipping_backend"),)),
)


class Source(NamedTuple):
    """A line of a peer's installed release: path under site-packages, line number, and a
    piece of its text (so that a moved or changed line is noticed)."""

    path: str
    line: int
    quote: str

    @property
    def label(self) -> str:
        return f"{self.path}:{self.line}"


class Cause(NamedTuple):
    """Why a check fails on a peer: one line, and the source lines it rests on."""

    text: str
    sources: tuple[Source, ...]


_TIMM = "timm/optim/lookahead.py"
_TIMM_LAZY = (Source(_TIMM, 45, "if 'lookahead_slow_buff' not in param_state"),
              Source(_TIMM, 47, "param_state['lookahead_slow_buff'].copy_(fast_p)"))
_TO = "torch_optimizer/lookahead.py"
_TO_SCHEDULE = (Source(_TO, 62, "param_state['slow_param'] = torch.clone(fast.data)"),
                Source(_TO, 76, "if group['counter'] == 0:"),
                Source(_TO, 79, "group['counter'] %= self.k"))
_PO = "pytorch_optimizer/optimizer/lookahead.py"
_PO_ALPHA = (Source(_PO, 32, "self.validate_range(alpha, 'alpha', 0.0, 1.0)"),
             Source("pytorch_optimizer/base/optimizer.py", 605,
                    "if range_type == '[)' and not low <= x < high:"))
_OPTAX = "optax/_src/lookahead.py"
_OPTAX_MERGED = (Source(_OPTAX, 210, "lambda f, u, s: f + u - s"),
                 Source(_OPTAX, 213, "lambda diff: slow_step_size * sync_next * diff"),
                 Source(_OPTAX, 216, "lambda up, diff: up - sync_next * (1 - slow_step_size) * diff"))

CAUSES: dict[tuple[str, str], Cause] = {
    # timm 1.0.31
    ("timm", "eq01_closed_form"): Cause(
        "No slow weights until the first sync (the backend shows the parameters until then), "
        "which copies the fast weights in and so moves nothing: φ starts from θ at step k "
        "instead of θ₀, and every later φ is off.", _TIMM_LAZY),
    ("timm", "schedule"): Cause(
        "The slow buffer is made at the first sync from the fast weights of that moment, "
        "not at construction: φ₀ = θ₀ is never held.", _TIMM_LAZY),
    ("timm", "reference"): Cause(
        "No slow weights before the first sync (the backend shows the parameters), and that "
        "sync moves nothing: φ leaves the reference at step 1, θ at the first sync.", _TIMM_LAZY),
    ("timm", "edge_cases"): Cause(
        "At α = 1 the one-sided `slow.add_(fast_p - slow, alpha=α)` gives φ + (θ − φ), which "
        "rounds away from θ: not the inner optimizer alone. At α = 0 and k = 1 the lazy buffer: "
        "no φ₀ before the first sync, which moves nothing.",
        (Source(_TIMM, 49, "slow.add_(fast_p - slow, alpha=group['lookahead_alpha'])"),
         *_TIMM_LAZY)),
    ("timm", "bad_input"): Cause(
        "The range checks `0.0 <= alpha <= 1.0` and `1 <= k` accept anything that compares: "
        "k = True, 2.5 and 2.0, α = True.",
        (Source(_TIMM, 20, "if not 0.0 <= alpha <= 1.0:"), Source(_TIMM, 22, "if not 1 <= k:"))),
    ("timm", "memory"): Cause(
        "The lazy slow buffer: no copy of the parameters until the first sync.", _TIMM_LAZY),
    # torch-optimizer 0.3.0
    ("torch-optimizer", "eq01_closed_form"): Cause(
        "Syncs when the counter is 0 before it counts the step: after steps 1, k+1, 2k+1, …; "
        "the first of them copies θ₁ in as φ.", _TO_SCHEDULE),
    ("torch-optimizer", "schedule"): Cause(
        "No slow weights before step 1, which makes them from θ₁ and syncs; then syncs at "
        "k+1, 2k+1, … instead of k, 2k, ….", _TO_SCHEDULE),
    ("torch-optimizer", "reference"): Cause(
        "The shifted schedule (steps 1, k+1, 2k+1, …) and φ₀ = θ₁.", _TO_SCHEDULE),
    ("torch-optimizer", "edge_cases"): Cause(
        "The shifted schedule and φ₀ = θ₁: at α = 1 with k = 2 no sync follows step 2 (φ is "
        "still θ₁), at α = 0 φ becomes θ₁ at step 1, and at k = 1 that first sync moves nothing.",
        _TO_SCHEDULE),
    ("torch-optimizer", "round_trip"): Cause(
        "`state_dict()` calls `Optimizer.state_dict`, but `__init__` never ran "
        "`Optimizer.__init__`, so torch's `_optimizer_state_dict_pre_hooks` do not exist: "
        "AttributeError, no checkpoint can be taken.",
        (Source(_TO, 90, "slow_state_dict = super(Lookahead, self).state_dict()"),)),
    ("torch-optimizer", "bad_input"): Cause(
        "Only `k < 0` and `alpha < 0` are refused: k = 0 is accepted (the first step's "
        "`% self.k` then raises ZeroDivisionError), and so are k = True, 2.5, 2.0 and "
        "α = 1.5, NaN, ∞, True.",
        (Source(_TO, 41, "if k < 0.0:"), Source(_TO, 43, "if alpha < 0:"),
         Source(_TO, 79, "group['counter'] %= self.k"))),
    ("torch-optimizer", "memory"): Cause(
        "The slow copy is made at the first step's sync, not at construction.",
        (Source(_TO, 62, "param_state['slow_param'] = torch.clone(fast.data)"),)),
    # pytorch_optimizer 4.1.0
    ("pytorch_optimizer", "eq01_closed_form"): Cause(
        "α is checked against the half-open range [0, 1): α = 1, the inner optimizer alone, "
        "raises ValueError, so the cases with α = 1 cannot run.", _PO_ALPHA),
    ("pytorch_optimizer", "edge_cases"): Cause(
        "α = 1 raises ValueError (range [0, 1)).", _PO_ALPHA),
    ("pytorch_optimizer", "bad_input"): Cause(
        "`validate_positive(k)` only tests `k <= 0`: k = True, 2.5 and 2.0 are accepted.",
        (Source(_PO, 31, "self.validate_positive(k, 'k')"),
         Source("pytorch_optimizer/base/optimizer.py", 629, "if x <= 0:"))),
    # optax 0.2.8
    ("optax", "eq01_closed_form"): Cause(
        "The sync is folded into the returned updates, θ + (u − (1−α)·d) and φ + α·d with "
        "d = θ + u − φ, which `apply_updates` rounds separately: after a sync θ and φ differ "
        "in the last bit instead of being equal.", _OPTAX_MERGED),
    ("optax", "edge_cases"): Cause(
        "The same folded update: at α = 1 the slow weights get the one-sided φ + (θ + u − φ), "
        "which rounds away from θ; at α = 0 the fast weights land near φ₀, not on it.",
        _OPTAX_MERGED),
    ("optax", "bad_input"): Cause(
        "Only `sync_period < 1` is refused (k = True, 2.5 and 2.0 pass) and `slow_step_size` "
        "is not checked at all. Nor are the gradients: `f + u - s` broadcasts one of shape "
        "(1,), (3,) or () over a (2, 3) parameter (and a (2, 3) one turns a (3,) parameter "
        "into a matrix), and one of another dtype (float16, float32/float64, int64) is "
        "promoted, then cast to the parameter's dtype by `apply_updates`.",
        (Source(_OPTAX, 113, "if sync_period < 1:"), _OPTAX_MERGED[0],
         Source("optax/_src/update.py", 42, "jnp.asarray(p + u).astype(jnp.asarray(p).dtype)"))),
    ("optax", "skipped_steps"): Cause(
        "`steps_since_sync` counts every update, also one the inner `apply_if_finite` "
        "rejected, so skipped steps advance the schedule; `apply_if_finite` cannot wrap "
        "`lookahead` itself (its rejected update has the gradients' structure, not "
        "`LookaheadParams`).",
        (Source(_OPTAX, 151, "steps_since_sync = (state.steps_since_sync + 1) % sync_period"),
         Source("optax/transforms/_conditionality.py", 251,
                "return optax.tree.zeros_like(updates), inner_state"))),
}
"""The cause of each known failure, by (peer, check), read in the releases the page names."""

NOTES: dict[tuple[str, str], str] = {
    ("timm", "skipped_steps"): "`GradScaler` skips the wrapper's whole `step()`.",
    ("torch-optimizer", "skipped_steps"): "`GradScaler` skips the wrapper's whole `step()`.",
    ("pytorch_optimizer", "skipped_steps"): "`GradScaler` skips the wrapper's whole `step()`.",
    ("optax", "memory"): ("`params.slow`: `init_synced` shares the fast weights' immutable "
                          "arrays until the first update, a copy in meaning."),
}
"""What a passing cell rests on, where the backend had to choose (see the peer modules)."""

MAX_FAILURES_SHOWN = 2


# --- run: the kit on each peer ----------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _site_packages(distribution: str) -> Path | None:
    """The folder the distribution's top-level package is installed in."""
    top = {"torch-optimizer": "torch_optimizer"}.get(distribution, distribution)
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def _portable(text: str) -> str:
    """A detail without this machine's paths: site-packages and the repository dropped."""
    text = re.sub(r"[^\s'\"(]*/site-packages/", "", text)
    return text.replace(f"{ROOT}{os.sep}", "")


def _portable_json(value: Any) -> Any:
    if isinstance(value, str):
        return _portable(value)
    if isinstance(value, list):
        return [_portable_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _portable_json(v) for k, v in value.items()}
    return value


def check_sources(peer: Peer, site: Path | None) -> dict[str, dict[str, Any]]:
    """Each source line `CAUSES` cites for this peer, as the installed release has it."""
    found: dict[str, dict[str, Any]] = {}
    for (name, _), cause in sorted(CAUSES.items()):
        if name != peer.name:
            continue
        for source in cause.sources:
            path = None if site is None else site / source.path
            lines = path.read_text(encoding="utf-8").splitlines() if path and path.is_file() else []
            text = lines[source.line - 1].strip() if len(lines) >= source.line else None
            found[source.label] = {"text": text, "matches": text is not None and source.quote in text}
    return found


def run_kit(backend: str, checks: Sequence[str], kit_args: Sequence[str],
            out: Path) -> tuple[int, dict[str, Any]]:
    """``python -m lookahead_conformance`` on one backend; its exit status and JSON report."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "lookahead_conformance", "--backend", backend,
               *(f"--check={c}" for c in checks), "--json", str(out), *kit_args]
    print(f"$ {' '.join(command[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    print(proc.stdout, end="", file=sys.stderr)
    if proc.returncode not in (0, 1) or not out.is_file():  # 1: a check failed, a verdict
        raise SystemExit(f"the kit did not certify {backend} (exit {proc.returncode}):\n"
                         f"{proc.stderr.strip()}")
    return proc.returncode, json.loads(out.read_text(encoding="utf-8"))


def run_peer(peer: Peer, kit_args: Sequence[str], folder: Path) -> dict[str, Any]:
    """The kit on one peer, each backend in its own process; the results and the versions."""
    from lookahead_conformance import CHECKS

    other = dict(peer.by_check)
    runs = [(peer.backend, [c for c in CHECKS if c not in other] if other else [])]
    runs += [(backend, [check]) for check, backend in other.items()]
    statuses, results, reports = [], {}, []
    for n, (backend, checks) in enumerate(runs):
        status, report = run_kit(backend, checks, kit_args, folder / f"{peer.name}-{n}.json")
        (found,) = report["backends"].values()  # one backend per run, whatever its key
        statuses.append((status, found["status"], found.get("reason")))
        for check, result in found.get("results", {}).items():
            results[check] = {**result, "backend": backend} if backend != peer.backend else result
        reports.append(report)
    return {
        "name": peer.name,
        "api": peer.api,
        "driven": peer.driven,
        "backend": peer.backend,
        "distribution": peer.distribution,
        "version": _version(peer.distribution),
        "libraries": {lib: _version(lib) for lib in peer.libraries},
        "exit_status": max(s for s, _, _ in statuses),
        "status": statuses[0][1],
        "reason": _portable_json(statuses[0][2]),
        "results": _portable_json({c: results[c] for c in CHECKS if c in results}),
        "kit_report": {k: v for k, v in reports[0].items() if k not in ("backends", "checks")},
        "sources": check_sources(peer, _site_packages(peer.distribution)),
    }


def run(json_path: Path, kit_args: Sequence[str]) -> dict[str, Any]:
    """Certify every peer and write the verdicts' JSON."""
    import lookahead_conformance
    from lookahead_conformance import CHECKS

    with tempfile.TemporaryDirectory() as folder:
        peers = [run_peer(peer, kit_args, Path(folder)) for peer in PEERS]
    seen = {check for peer in peers for check in peer["results"]}
    data = {
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "python": platform.python_version(),
        "kit": {"distribution": "lookahead-optimizer", "version": _version("lookahead-optimizer"),
                "checks_version": getattr(lookahead_conformance, "CHECKS_VERSION", None),
                "args": list(kit_args)},
        "checks": {name: {"summary": check.summary, "exact": check.exact}
                   for name, check in CHECKS.items() if name in seen},
        "peers": peers,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return data


# --- page: the Markdown ------------------------------------------------------------------------


def _eps(value: Any) -> str:
    if isinstance(value, str):  # the kit writes a non-finite error as a string
        return value
    return f"{value:.1f}" if value < 1000 else f"{value:.2g}"


def _cell_text(text: str) -> str:
    """Text for a table cell: one line, no pipe to split it."""
    return " ".join(text.replace("|", "¦").split())


def _code(text: str) -> str:
    """A code span for a table cell (a backtick inside would end it early)."""
    return f"`{_cell_text(text).replace('`', chr(39))}`"


def _failures(result: dict[str, Any]) -> list[str]:
    failures = result.get("failures")
    return list(failures) if failures else [result.get("detail", "")]


def verdict(result: dict[str, Any], exact: bool) -> str:
    """``pass (1.8 eps)``, ``pass (exact)``, ``pass``, ``n/a``, ``FAIL (3/39 cases, 2.1e+06 eps)``."""
    status = result["status"]
    if status == "n/a":
        return "n/a"
    worst = result.get("worst_eps")
    if status == "pass":
        if worst is not None:
            return f"pass ({_eps(worst)} eps)"
        return "pass (exact)" if exact else "pass"
    parts = []
    if result.get("failed_cases") is not None and result.get("cases"):
        parts.append(f"{result['failed_cases']}/{result['cases']} cases")
    if worst is not None:
        parts.append(f"{_eps(worst)} eps")
    return "FAIL" + (f" ({', '.join(parts)})" if parts else "")


class Problem(NamedTuple):
    """Something the page's reader and the maintainer must see: a gap in `CAUSES`."""

    peer: str
    check: str
    what: str


def _cause_cell(peer: dict[str, Any], check: str, result: dict[str, Any],
                problems: list[Problem]) -> str:
    cause = CAUSES.get((peer["name"], check))
    failed = result["status"] == "fail"
    if failed and cause is None:
        problems.append(Problem(peer["name"], check, "a failure with no cause recorded"))
        return ("**no cause recorded**: a new failure; read the peer's source and add it to "
                "`CAUSES` in `conformance/peers/verdicts.py`")
    if not failed and cause is not None:
        problems.append(Problem(peer["name"], check, f"a cause is recorded but the check is "
                                                     f"{result['status']}"))
        return "**a cause is recorded but the check did not fail**: remove it from `CAUSES`"
    if cause is None:
        return NOTES.get((peer["name"], check), "")
    lines_of: dict[str, list[str]] = {}  # path -> its cited lines, in the cause's order
    for source in cause.sources:
        seen = peer.get("sources", {}).get(source.label)
        line = str(source.line)
        if seen is None:
            problems.append(Problem(peer["name"], check, f"{source.label} was not read in this run"))
            line += " (**not checked in this run**)"
        elif not seen["matches"]:
            problems.append(Problem(peer["name"], check, f"{source.label} no longer reads "
                                                         f"{source.quote!r}"))
            line += " (**the line changed: re-read the source**)"
        lines_of.setdefault(source.path, []).append(line)
    cited = "; ".join(f"`{path}` {', '.join(lines)}" for path, lines in lines_of.items())
    return f"{cause.text} ({cited})"


def _measured_cell(result: dict[str, Any]) -> str:
    if result["status"] != "fail":
        return ""
    failures = [f for f in _failures(result) if f]
    shown = [_code(f) for f in failures[:MAX_FAILURES_SHOWN]]
    more = len(failures) - len(shown)
    if more > 0:
        shown.append(f"and {more} more in the JSON")
    return "<br>".join(shown)


def _versions_table(data: dict[str, Any]) -> list[str]:
    rows = ["| | version |", "|---|---|"]
    for peer in data["peers"]:
        libraries = ", ".join(f"{lib} {ver}" for lib, ver in peer["libraries"].items())
        rows.append(f"| {peer['name']} (`{peer['api']}`) | {peer['version']}, on {libraries} |")
    rows.append(f"| Python | {data['python']} |")
    kit = data["kit"]
    checks_version = kit.get("checks_version")
    rows.append(f"| lookahead-optimizer (the kit) | {kit['version']}"
                + (f", `CHECKS_VERSION` {checks_version}" if checks_version is not None else "")
                + " |")
    return rows


def _kit_arguments(data: dict[str, Any]) -> str:
    """The seed and example count the kit reports, or the arguments it was given."""
    reported = data["peers"][0].get("kit_report", {}) if data["peers"] else {}
    found = [f"{key.replace('_', ' ')} {reported[key]}"
             for key in ("seed", "max_examples") if reported.get(key) is not None]
    if found:
        return ", ".join(found)
    return " ".join(data["kit"].get("args", [])) or "the kit's defaults"


def render(data: dict[str, Any]) -> tuple[str, list[Problem]]:
    """The page's Markdown from the verdicts' JSON, and the gaps in `CAUSES` it shows."""
    checks = list(data["checks"])
    problems: list[Problem] = []
    lines = [
        "# Verdicts",
        "",
        "The [conformance kit](conformance.md) run on the Lookahead implementations people "
        "use, through the public API each offers, as its users call it. Each peer has a "
        "backend in `conformance/peers/` (kept out of the installed package) that drives it "
        "as a training loop does; the choices a backend had to make are stated in its module "
        "and, where they decide a cell, under the tables. "
        "[Other implementations](peers.md) describes the same peers from their sources.",
        "",
        f"Generated on {data['date']} by `make verdicts` (which installs the peers into "
        "`.venv` as the performance suite does and regenerates this page and "
        "`docs/results/verdicts.json`, with every failing case); kit arguments: "
        f"{_kit_arguments(data)}.",
        "",
        *_versions_table(data),
        "",
        "## The matrix",
        "",
        "| peer | " + " | ".join(checks) + " |",
        "|---" * (len(checks) + 1) + "|",
    ]
    for peer in data["peers"]:
        if peer["status"] == "skipped":
            cells = ["skipped"] * len(checks)
        else:
            cells = [verdict(peer["results"][c], data["checks"][c]["exact"])
                     if c in peer["results"] else "—" for c in checks]
        lines.append(f"| {peer['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "A cell reads as in the kit's report: the worst error in units of ε of the dtype times "
        "the largest magnitude involved, `exact` for a bit-exact check; a failure gives the "
        "failing cases out of those run where the kit counts them. The rule behind each check:",
        "",
        "| check | rule |",
        "|---|---|",
        *(f"| `{name}` | {_cell_text(check['summary'])} |" for name, check in data["checks"].items()),
    ]
    lines += [
        "",
        "Each cause below was written after reading the release named above, at the cited "
        "lines (paths under `site-packages`). `make verdicts` reads every cited line of the "
        "installed release again, and the page flags a line that changed, a failure that no "
        "cause explains, and a cause whose check no longer fails.",
    ]
    for peer in data["peers"]:
        lines += ["", f"## {peer['name']} {peer['version']}", ""]
        if peer.get("driven"):
            lines += [f"Driven as `{peer['api']}`'s users drive it: {peer['driven']}", ""]
        if peer["status"] != "ran":
            lines.append(f"{peer['status']}: {_cell_text(peer.get('reason') or '')}")
            if peer["status"] == "skipped":
                continue
            lines.append("")
        lines += ["| check | verdict | first failing cases | cause in the source |",
                  "|---|---|---|---|"]
        for check in checks:
            result = peer["results"].get(check)
            if result is None:
                continue
            label = f"`{check}`" + (f" (on `{result['backend']}`)" if "backend" in result else "")
            lines.append(f"| {label} | {verdict(result, data['checks'][check]['exact'])} | "
                         f"{_measured_cell(result)} | {_cause_cell(peer, check, result, problems)} |")
    if problems:
        lines += ["", "!!! warning \"Gaps in the causes\"", ""]
        lines += [f"    - {p.peer}, `{p.check}`: {p.what}" for p in problems]
    return "\n".join(lines) + "\n", problems


def page(json_path: Path, page_path: Path) -> int:
    """Write the page; 1 (after writing it) when the causes have gaps, else 0."""
    data = json.loads(json_path.read_text(encoding="utf-8"))
    text, problems = render(data)
    page_path.write_text(text, encoding="utf-8")
    for p in problems:
        print(f"verdicts: {p.peer}::{p.check}: {p.what}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verdicts.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="certify every peer, write the JSON")
    run_parser.add_argument("--json", type=Path, required=True, metavar="FILE")
    run_parser.add_argument("kit_args", nargs="*", help="after --: arguments for the kit's CLI")
    page_parser = sub.add_parser("page", help="write the Markdown page from the JSON")
    page_parser.add_argument("json", type=Path)
    page_parser.add_argument("page", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.json, args.kit_args)
        return 0
    return page(args.json, args.page)


if __name__ == "__main__":
    sys.exit(main())
