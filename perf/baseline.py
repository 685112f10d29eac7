"""The code before a change against the code after it, in one run: another checkout of this
repository (a detached git worktree of REV in a temporary folder, removed at the end, also on an
error, Ctrl-C or SIGTERM) that a benchmark starts clipperd from, the rounds' rotation, and the
figures of both compared as ratios where at least 1 means no worse (``BOUND`` is the bar).

A system named ``clipperd@REV`` is clipperd run from the worktree of REV: the same interpreter
(the project's virtual environment), the worktree as working directory and as the only
``PYTHONPATH`` entry, so that ``server``, ``schedulers`` and ``backends`` are REV's (the venv's
editable install points at the main checkout; ``checkouts`` checks that it does not win). Both
serve the same model repository, the current checkout's, so the models are identical."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
BOUND = 0.95  # issue 15: new/old >= 0.95 on every gated figure
T = TypeVar("T")


@dataclass(frozen=True)
class Checkout:
    rev: str  # as given: HEAD~1, a branch, a hash
    commit: str  # what it resolved to when the run began
    path: Path
    package: str = ""  # where ``server`` was imported from there (checked before measuring)

    def env(self) -> dict[str, str]:
        """The worktree first and alone: PYTHONPATH set for this checkout must not leak in."""
        return {"PYTHONPATH": str(self.path)}


def split_name(name: str) -> tuple[str, str | None]:
    """``clipperd@HEAD~1`` -> (``clipperd``, ``HEAD~1``); ``clipperd`` -> (``clipperd``, None)."""
    base, sep, rev = name.partition("@")
    if sep and not rev:
        raise ValueError(f"{name!r}: no revision after '@'")
    return base, rev if sep else None


def rotate(items: Sequence[T], round_no: int) -> list[T]:
    """The order of round ``round_no`` (from 0): shifted by one each round, so none always goes first."""
    if not items:
        return []
    k = round_no % len(items)
    return [*items[k:], *items[:k]]


def git(*args: str) -> str:
    run = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {run.stderr.strip() or run.returncode}")
    return run.stdout.strip()


def resolve(rev: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RuntimeError:
        raise ValueError(f"{rev!r} is not a commit of {ROOT}") from None


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Checkout]:
    """A detached worktree of ``rev`` in a fresh temporary folder, removed (and pruned from the
    repository's list) when the block ends, however it ends."""
    commit = resolve(rev)
    parent = Path(tempfile.mkdtemp(prefix="clipperd-baseline-"))
    path = parent / commit[:12]
    try:
        git("worktree", "add", "--detach", str(path), commit)
        yield Checkout(rev, commit, path)
    finally:
        with contextlib.suppress(RuntimeError):  # a half-made one: the folder goes, prune forgets it
            git("worktree", "remove", "--force", str(path))
        shutil.rmtree(parent, ignore_errors=True)
        with contextlib.suppress(RuntimeError):
            git("worktree", "prune")


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit here, so the ``finally`` blocks (servers, worktrees) run as on Ctrl-C."""
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def imported_from(checkout: Checkout, python: str) -> str:
    """Where ``python`` run as clipperd is run from ``checkout`` imports ``server`` from; an error
    unless it is the worktree (an install or a PYTHONPATH that wins would measure the wrong code)."""
    run = subprocess.run(
        [python, "-c", "import server; print(server.__file__)"],
        cwd=checkout.path,
        env={**os.environ, **checkout.env()},
        capture_output=True,
        text=True,
        check=False,
    )
    package = Path(run.stdout.strip()).resolve() if run.returncode == 0 else None
    if package is None or not package.is_relative_to(checkout.path.resolve()):
        found = run.stdout.strip() or run.stderr.strip()[-300:]
        raise RuntimeError(f"clipperd@{checkout.rev} would not run {checkout.path}'s code: server is {found}")
    return str(package.parent)


@contextlib.contextmanager
def checkouts(revs: Iterable[str], python: str) -> Iterator[dict[str, Checkout]]:
    """One worktree per distinct revision, checked to import its own code, by revision as given."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_unwinds())
        found: dict[str, Checkout] = {}
        for rev in dict.fromkeys(revs):
            checkout = stack.enter_context(worktree(rev))
            found[rev] = dataclasses.replace(checkout, package=imported_from(checkout, python))
        yield found


@dataclass(frozen=True)
class Figure:
    """One figure of the old and the new code; ``ratio`` is at least 1 where the new is no worse."""

    where: str  # e.g. "grpc c=8"
    name: str  # e.g. "infer/s", "p50 ms"
    old: float
    new: float
    higher_is_better: bool
    gated: bool = True  # held to BOUND; p99 is shown but too noisy here to hold

    @property
    def ratio(self) -> float:
        top, bottom = (self.new, self.old) if self.higher_is_better else (self.old, self.new)
        return top / bottom if bottom > 0 else math.nan

    @property
    def ratio_kind(self) -> str:
        return "new/old" if self.higher_is_better else "old/new"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def markdown_table(figures: Sequence[Figure], old: str, new: str, bound: float = BOUND) -> str:
    """The comparison as a markdown table, ready for docs/benchmarks.md."""
    lines = [
        f"| where | figure | old: {old} | new: {new} | ratio | ≥ {bound} |",
        "|---|---|---:|---:|---:|---|",
    ]
    for f in figures:
        verdict = ("yes" if f.ratio >= bound else "**no**") if f.gated else "not gated"
        ratio = f"{f.ratio:.3f} ({f.ratio_kind})"
        lines.append(f"| {f.where} | {f.name} | {_number(f.old)} | {_number(f.new)} | {ratio} | {verdict} |")
    return "\n".join(lines)


def verdict(figures: Sequence[Figure], bound: float = BOUND) -> tuple[bool, str]:
    """(passed, one line): every gated ratio at least ``bound``."""
    gated = [f for f in figures if f.gated]
    if not gated:
        return False, f"no regression (every gated ratio >= {bound}): FAIL, nothing was compared"
    low = [f for f in gated if not f.ratio >= bound]  # NaN fails too
    if low:
        names = ", ".join(f"{f.where} {f.name} {f.ratio:.3f}" for f in low)
        return False, f"no regression (every gated ratio >= {bound}): FAIL, below: {names}"
    worst = min(gated, key=lambda f: f.ratio)
    return True, (
        f"no regression (every gated ratio >= {bound}): PASS, lowest {worst.ratio:.3f} ({worst.where} {worst.name})"
    )


def current_commit() -> str:
    """This checkout's commit, and whether it has changes on top (they are measured too)."""
    head = git("rev-parse", "--short=10", "HEAD")
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def report(figures: Sequence[Figure], new: str, old: Checkout, old_name: str, rounds: int) -> dict[str, object]:
    """Prints the comparison (a title, the markdown table, the verdict line) and returns it for a
    JSON report."""
    old_label = f"{old_name} ({old.commit[:10]})"
    print(f"\n{new} (this checkout, {current_commit()}) against {old_label}, medians of {rounds} round(s):\n")
    print(markdown_table(figures, old_label, new))
    passed, line = verdict(figures)
    print(f"\n{line}", flush=True)
    rows = [dataclasses.asdict(f) | {"ratio": f.ratio, "ratio_is": f.ratio_kind} for f in figures]
    return {
        "new": new,
        "old": old_name,
        "old_commit": old.commit,
        "bound": BOUND,
        "passed": passed,
        "verdict": line,
        "figures": rows,
    }
