"""The GPU kit, CPU side: build the wheelhouse the device lacks, check everything that travels, print the device call.

    python benchmarks/gpu/prepare.py             # download wheels.txt's wheels (cp312, manylinux x86-64) into .whl/
    python benchmarks/gpu/prepare.py --check     # no download: check .whl/ and the tree as they are

Checks, each an error (exit 1) when it fails:
1. every required wheel of `wheels.txt` is in `.whl/`, one version each (two stop the device's install);
2. the tree that travels (git's tracked and untracked-not-ignored files, `shared/` if the checkout has one, and the
   carried `.whl/`) is at most 64 MiB; optional wheels are added only while it stays `--margin-mib` below that;
3. the built-in model's other training slides (`TRAINING_DATA`, from ../shared/data, which the device does not
   receive) are copied into `.whl/data/` for step e (`build.sh --device cuda` reads them through DATA);
4. every third-party module that the kit's code imports outside a try/except ImportError (zwsi, slide_io,
   reports, the benchmarks the kit runs, the GPU tests and the test helpers they import) comes from a distribution
   the device image has (`device_packages.txt`) or that travels as a wheel.

Then it prints the exact `run` call (command, carry, timeout_s) for a session that is lent the H200. Run it in the
checkout the session was started in: the device receives that checkout, not a helper's worktree.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = Path(__file__).resolve().parent
WHEELS = REPO / ".whl"
LIMIT_MIB = 64.0
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")
# What the kit runs (besides the GPU test files, found by their marker, and the test helpers they import).
KIT_SOURCES = ("zwsi", "slide_io", "reports", "benchmarks/gpu", "benchmarks/model_forward.py",
               "benchmarks/train_step.py", "benchmarks/generate.py", "benchmarks/bench_json.py",
               "benchmarks/random_pipeline.py")
LOCAL = {"zwsi", "slide_io", "reports", "validation", "tests", "benchmarks"}
SHARED_DATA = REPO.parent / "shared" / "data"
TRAINING_DATA = ("wsi/OS-1-detail.ome.tif", "wsi/tcga-cr-7395-01a-01-ts1.svs")
"""The built-in model's training slides besides the bundled CMU slide (configs/default_model/build.sh, DATA)."""
DEVICE_COMMAND = "PYTHONUNBUFFERED=1 python3 benchmarks/gpu/run.py --budget 480"
DEVICE_TIMEOUT_S = 570


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of -, _ and . as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Wanted:
    name: str
    version: str
    optional: bool

    def matches(self, wheel: Path) -> bool:
        dist, version = wheel.name.split("-")[:2]
        return canonical(dist) == canonical(self.name) and version == self.version


def read_wheel_list(path: Path = KIT / "wheels.txt") -> list[Wanted]:
    wanted = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *flags = line.split()
        name, sep, version = spec.partition("==")
        if not sep or not version or flags not in ([], ["optional"]):
            raise ValueError(f"{path}: bad line {raw!r}; expected 'NAME==VERSION' or 'NAME==VERSION  optional'")
        wanted.append(Wanted(name, version, optional=bool(flags)))
    return wanted


def read_device_packages(path: Path = KIT / "device_packages.txt") -> set[str]:
    return {canonical(line.strip()) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")}


def download(want: Wanted, dest: Path) -> Path:
    """`pip download --no-deps` of one cp312 manylinux x86-64 (or pure-Python) wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(dest),
           f"{want.name}=={want.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = [w for w in dest.glob("*.whl") if want.matches(w)]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"pip download {want.name}=={want.version} failed (rc {done.returncode}): "
                           f"{done.stderr.strip()[-1500:]}")
    return found[0]


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what travels besides carried paths: git's tracked and untracked-not-ignored files, and shared/."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.decode().split("\0")
    total = 0
    for rel in filter(None, listed):
        path = repo / rel
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    shared = repo / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file() and not p.is_symlink())
    return total


# ---------------------------------------------------------------------------------------------------------------
#  Import coverage
# ---------------------------------------------------------------------------------------------------------------
def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a `try` that catches ImportError (or ModuleNotFoundError / Exception): an optional import."""
    while node in parents:
        node, child = parents[node], node
        if isinstance(node, ast.Try) and child in node.body:
            for handler in node.handlers:
                names = [handler.type] if not isinstance(handler.type, ast.Tuple) else list(handler.type.elts)
                if handler.type is None or any(isinstance(n, ast.Name) and n.id in
                                               ("ImportError", "ModuleNotFoundError", "Exception") for n in names):
                    return True
    return False


def _imports(path: Path) -> list[tuple[str, bool, str]]:
    """(top-level module, optional, dotted name) of every absolute import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], _guarded(node, parents), a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], _guarded(node, parents), node.module))
    return found


def kit_files(repo: Path = REPO) -> list[Path]:
    """The kit's sources, the GPU test files and (recursively) the test modules they import."""
    files: list[Path] = []
    for rel in KIT_SOURCES:
        p = repo / rel
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    todo = [p for p in (repo / "tests").rglob("test_*.py") if "pytest.mark.gpu" in p.read_text(encoding="utf-8")]
    todo += [repo / "tests" / "conftest.py", repo / "tests" / "zwsi" / "conftest.py"]
    seen: set[Path] = set()
    while todo:
        p = todo.pop()
        if p in seen or not p.is_file():
            continue
        seen.add(p)
        for _, _, dotted in _imports(p):
            if dotted.startswith("tests."):
                todo.append(repo / (dotted.replace(".", "/") + ".py"))
    return files + sorted(seen)


def missing_on_device(repo: Path = REPO, wanted: list[Wanted] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(errors, warnings): module -> why, for third-party imports the device would lack. Errors: a required import
    whose distribution neither the device image has nor a required wheel brings. Warnings: one that only an
    optional wheel brings."""
    wanted = read_wheel_list() if wanted is None else wanted
    device = read_device_packages()
    required = {canonical(w.name) for w in wanted if not w.optional}
    optional = {canonical(w.name) for w in wanted if w.optional}
    scripts = {p.stem for p in (repo / "benchmarks").glob("*.py")} | {p.stem for p in (repo / "benchmarks" / "gpu").glob("*.py")}
    owners = importlib.metadata.packages_distributions()
    errors: dict[str, str] = {}
    warnings: dict[str, str] = {}
    for path in kit_files(repo):
        for module, guarded, _ in _imports(path):
            if guarded or module in LOCAL or module in scripts or module in sys.stdlib_module_names:
                continue
            where = path.relative_to(repo).as_posix()
            dists = {canonical(d) for d in owners.get(module, [])}
            if not dists:
                errors.setdefault(module, f"imported by {where}, but no installed distribution provides it here")
            elif dists & (device | required):
                continue
            elif dists & optional:
                warnings.setdefault(module, f"imported by {where}: only the optional wheel {sorted(dists)} brings it")
            else:
                errors.setdefault(module, f"imported by {where}: distribution {sorted(dists)} is neither on the "
                                          f"device nor in wheels.txt")
    return errors, warnings


# ---------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="download nothing; check .whl/ as it is")
    ap.add_argument("--wheels-dir", type=Path, default=WHEELS)
    ap.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="what the device accepts (64 MiB)")
    ap.add_argument("--margin-mib", type=float, default=4.0,
                    help="room kept free when adding optional wheels (the tree grows between prepare and the call)")
    args = ap.parse_args(argv)
    mib = 2**20
    wanted = read_wheel_list()
    dest: Path = args.wheels_dir
    problems: list[str] = []
    if not args.check:
        for want in wanted:
            if not any(want.matches(w) for w in dest.glob("*.whl")) and not want.optional:
                print(f"download {want.name}=={want.version}", flush=True)
                download(want, dest)
    # one version of each, nothing the list does not name
    for wheel in sorted(dest.glob("*.whl")):
        if not any(w.matches(wheel) for w in wanted):
            if args.check:
                problems.append(f"{wheel.name} is in {dest} but not in wheels.txt (two versions stop the install)")
            else:
                print(f"remove {wheel.name} (not in wheels.txt)")
                wheel.unlink()
    for want in wanted:
        if not want.optional and not any(want.matches(w) for w in dest.glob("*.whl")):
            problems.append(f"required wheel {want.name}=={want.version} is missing from {dest}")
    for rel in TRAINING_DATA:  # step e's slides: the device receives no ../shared
        target = dest / "data" / rel
        if not args.check and not target.is_file() and (SHARED_DATA / rel).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SHARED_DATA / rel, target)
        if not target.is_file():
            print(f"note: {target} is missing: step e (build.sh --device cuda) will stop naming it")
    base = tree_bytes() + sum(f.stat().st_size for f in (dest / "data").rglob("*") if f.is_file())
    wheel_bytes = sum(w.stat().st_size for w in dest.glob("*.whl"))
    extras = [w for w in wanted if w.optional]  # one group: all travel or none (tiffslide needs imagecodecs)
    partial = [f for f in dest.glob("*.whl") if any(w.matches(f) for w in extras)]
    if partial and len(partial) < len(extras):
        for f in partial:
            print(f"remove {f.name} (the optional group travels whole or not at all)")
            wheel_bytes -= f.stat().st_size
            f.unlink()
    if extras and not args.check and not all(any(w.matches(f) for f in dest.glob("*.whl")) for w in extras):
        side = dest / ".optional"
        fetched = [download(w, side) for w in extras]
        size = sum(f.stat().st_size for f in fetched)
        names = ", ".join(f"{w.name}=={w.version}" for w in extras)
        if (base + wheel_bytes + size) / mib <= args.limit_mib - args.margin_mib:
            for f in fetched:
                f.rename(dest / f.name)
            wheel_bytes += size
            print(f"optional {names}: carried ({size / mib:.1f} MiB)")
        else:
            print(f"optional {names}: left out ({size / mib:.1f} MiB: the tree would exceed "
                  f"{args.limit_mib - args.margin_mib:.0f} MiB)")
        shutil.rmtree(side, ignore_errors=True)
    total = base + wheel_bytes
    if total / mib > args.limit_mib:
        problems.append(f"the tree that travels is {total / mib:.1f} MiB (tree and data {base / mib:.1f} + wheels "
                        f"{wheel_bytes / mib:.1f}); the device accepts {args.limit_mib:.0f} MiB")
    errors, warnings = missing_on_device(wanted=wanted)
    problems += [f"import {m}: {why}" for m, why in sorted(errors.items())]
    carried = sorted(w.name for w in dest.glob("*.whl"))
    print(f"\nwheels in {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}: {len(carried)}, "
          f"{wheel_bytes / mib:.1f} MiB")
    for name in carried:
        print(f"  {name}  {(dest / name).stat().st_size / mib:.2f} MiB")
    print(f"tree without wheels {base / mib:.1f} MiB; total that travels {total / mib:.1f} MiB of {args.limit_mib:.0f}")
    for module, why in sorted(warnings.items()):
        print(f"note: import {module}: {why}")
    summary = {"wheels": carried, "wheels_mib": round(wheel_bytes / mib, 2), "tree_mib": round(base / mib, 2),
               "total_mib": round(total / mib, 2), "problems": problems}
    print("summary: " + json.dumps(summary))
    if problems:
        print("\nNOT READY:\n  " + "\n  ".join(problems))
        return 1
    carry = [dest.relative_to(REPO).as_posix()] if dest.is_relative_to(REPO) else [str(dest)]
    print("\nThe device call (the tool `run`), once, at the start of a session that is lent the H200:")
    print(json.dumps({"command": DEVICE_COMMAND, "carry": carry, "timeout_s": DEVICE_TIMEOUT_S}, indent=2))
    print("Then read results.jsonl and the step logs under files_at; rerun one step (--steps X) if device time is left, "
          "else give_back at once (benchmarks/gpu/README.md).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
