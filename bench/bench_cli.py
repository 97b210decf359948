"""Command-line start-up: how long `nextbest --help` and `nextbest data summary` take.

    python bench/bench_cli.py                     # records docs/benchmarks.md
    python bench/bench_cli.py --baseline-ref HEAD~5 --no-record

Each command runs ``--repeat`` times in a fresh process (the median is reported), beside two
baselines measured in the same run: the interpreter starting and exiting (``python -c pass``,
the floor no command can beat), and, with ``--baseline-ref``, the same commands from an earlier
commit (checked out to a temporary worktree and run with this virtual environment). The summary
runs on a demo-sized shop (200,000 events) generated once into a temporary directory.
Targets: `nextbest --help` <= 1 s, `nextbest data summary` <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGETS = {"--help": 1.0, "data summary": 3.0}


def timed(command: list[str], cwd: Path, repeat: int) -> float:
    """Median wall time of ``command`` over ``repeat`` fresh processes (one warm-up first)."""
    subprocess.run(command, cwd=cwd, capture_output=True, check=True)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cli(source: Path) -> list[str]:
    """The nextbest command as the code under ``source`` defines it, on this interpreter."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(source)!r}); "
            "sys.argv[0] = 'nextbest'; from serving.cli import main; main()"]


def worktree(ref: str, into: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(into), ref], cwd=ROOT,
                   capture_output=True, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline-ref", help="Also time the commands of this git ref.")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from rich.console import Console

    console = Console()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        with console.status("generating a 200,000-event shop"):
            subprocess.run([*cli(ROOT), "data", "generate", "--events", "200000",
                            "--data-dir", str(data)], capture_output=True, check=True)
        sources = {"now": ROOT}
        if args.baseline_ref:
            sources[args.baseline_ref] = worktree(args.baseline_ref, Path(tmp) / "baseline")
        try:
            floor = timed([sys.executable, "-c", "pass"], ROOT, args.repeat)
            for name, source in sources.items():
                with console.status(f"timing the commands of {name}"):
                    rows[name] = {
                        "--help": timed([*cli(source), "--help"], source, args.repeat),
                        "data summary": timed([*cli(source), "data", "summary", "--data-dir",
                                               str(data)], source, args.repeat)}
        finally:
            if args.baseline_ref:
                subprocess.run(["git", "worktree", "remove", "--force", str(sources[
                    args.baseline_ref])], cwd=ROOT, capture_output=True, check=False)
    table = render(rows, floor)
    console.print(table)
    now = rows["now"]
    summary = {"bench": "cli", "python_start_s": round(floor, 3),
               **{f"{k}_s": round(v, 3) for k, v in now.items()},
               **({f"{args.baseline_ref}:{k}_s": round(v, 3)
                   for k, v in rows[args.baseline_ref].items()} if args.baseline_ref else {}),
               "targets_s": TARGETS,
               "meets_targets": all(now[k] <= limit for k, limit in TARGETS.items())}
    print(json.dumps(summary))
    if not args.no_record:
        from bench.record import record_section

        command = "python bench/bench_cli.py" + (f" --baseline-ref {args.baseline_ref}"
                                                 if args.baseline_ref else "")
        record_section("bench_cli", "Command line: start-up", command, table + (
            f"\n\nMedian of {args.repeat} fresh processes after a warm-up; the summary is of a "
            "200,000-event shop. Targets: `nextbest --help` <= 1 s, `nextbest data summary` "
            f"<= 3 s: {'met' if summary['meets_targets'] else 'not met'}."))
        console.print("recorded in docs/benchmarks.md")


def render(rows: dict[str, dict[str, float]], floor: float) -> str:
    names = list(rows)
    lines = ["| command | " + " | ".join(f"nextbest ({n})" for n in names)
             + " | python -c pass (baseline) | target |",
             "|---|" + "---|" * (len(names) + 2)]
    for command, target in TARGETS.items():
        cells = " | ".join(f"{rows[n][command]:.2f} s" for n in names)
        lines.append(f"| `nextbest {command}` | {cells} | {floor:.2f} s | <= {target:g} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
