"""What a command prints: quiet library logs, a log file, progress bars and a summary table.

A command shows what it is doing (this package's own INFO lines, as plain text), one progress
bar per stage, every warning (`warning: ...`, and Python's warnings as usual) and at the end a
short table of the results and of where the files are. The INFO logs of the libraries (orbax,
jax, absl) go to the log file only (`workdir.log_path`, absl's line format). Any of absl's
`--verbosity`, `--stderrthreshold`, `--logtostderr`, `--alsologtostderr` on the command line
brings absl's own stderr output back, unfiltered. Console lines go through `tqdm.write`, so a
log line never breaks a progress bar.
"""

import logging
import math
import os
import pathlib
import sys

import tqdm
from absl import flags
from absl import logging as absl_logging

from cmaae_jax import metrics, reference
from cmaae_jax import workdir as workdir_lib

# absl flags that ask for absl's own log output on stderr.
VERBOSE_FLAGS = ("verbosity", "v", "stderrthreshold", "logtostderr", "alsologtostderr")
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_NAME_WIDTH = 14


def _is_own(record: logging.LogRecord) -> bool:
    return os.path.abspath(record.pathname).startswith(_OWN_DIR)


def _fatal_only(record: logging.LogRecord) -> bool:
    """absl's handler keeps FATAL records alone (it prints them and aborts the process)."""
    return record.levelno >= logging.CRITICAL


class _ConsoleHandler(logging.Handler):
    """Warnings of every logger and this package's own INFO lines, as plain text on stderr."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s"))

    def filter(self, record):
        if record.levelno >= logging.WARNING:
            return True
        return record.levelno >= logging.INFO and _is_own(record)

    def emit(self, record):
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            tqdm.tqdm.write(text, file=sys.stderr)
        except Exception:  # logging's own convention: report, never raise
            self.handleError(record)


def _file_handler(path) -> logging.FileHandler:
    """Appends INFO and up, in absl's format, starting with the command line."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(absl_logging.PythonFormatter())
    command = " ".join(sys.argv)
    handler.handle(logging.LogRecord("cmaae_jax", logging.INFO, __file__, 0, command, (), None))
    return handler


def verbose_flag_given() -> bool:
    """True when the command line set one of absl's VERBOSE_FLAGS."""
    return any(name in flags.FLAGS and flags.FLAGS[name].present for name in VERBOSE_FLAGS)


def setup(log_file=None, create: bool = False, quiet: bool | None = None) -> bool:
    """Sets up a command's console (after flag parsing); returns whether it is quiet.

    Quiet (default: unless `verbose_flag_given()`) means the libraries' INFO logs leave the
    console. `log_file` (None: none) receives every logger's records at INFO and above; its
    folder is created when `create`, else a missing folder means no log file (a command given
    a wrong workdir must not create it). Calling it again replaces the previous set-up.
    """
    quiet = not verbose_flag_given() if quiet is None else quiet
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_cmaae_console", False)]:
        root.removeHandler(handler)
        handler.close()
    absl_handler = absl_logging.get_absl_handler()
    absl_handler.removeFilter(_fatal_only)
    handlers = []
    if quiet:
        absl_handler.addFilter(_fatal_only)
        handlers.append(_ConsoleHandler())
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
    if log_file is not None:
        path = pathlib.Path(log_file)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.is_dir():
            handlers.append(_file_handler(path))
    for handler in handlers:
        handler._cmaae_console = True
        root.addHandler(handler)
    return quiet


def progress(total: int, desc: str, unit: str = "image", initial: int = 0, disable=False):
    """A one-line progress bar on stderr, updated in place and kept when done."""
    return tqdm.tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=disable,
        dynamic_ncols=True,
        mininterval=0.5,
        leave=True,
    )


def close_bars() -> None:
    """Closes the progress bars still open (before an error line, so it starts a line)."""
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        bar.close()


def _row(name: str, value) -> str:
    return f"  {name:<{_NAME_WIDTH}}{value}"


def _number(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def summary_lines(result: dict | None, workdir) -> list[str]:
    """The closing table of a command: an evaluation's headline metrics, its threshold and
    test set (when `result`, the dict of eval/metrics.json, is given) and the run's files."""
    workdir = pathlib.Path(workdir)
    lines = []
    if result is not None:
        counts = f"{result['num_images']} test images, {result['num_defective']} defective"
        if result.get("num_images_without_masks"):
            counts += f", {result['num_images_without_masks']} without masks"
        lines.append(f"evaluation of checkpoint {result['checkpoint_step']} ({counts})")
        lines += [_row(k, _number(result[k])) for k in metrics.HEADLINE_KEYS]
        rule = f" ({result['threshold_rule']})" if "threshold_rule" in result else ""
        lines.append(_row("threshold", f"{result['threshold']:.4g}{rule}"))
        if "method" in result:
            lines.append(_row("map", map_description(result)))
        if result.get("held_out"):  # empty: eval.held_out_check off
            lines += held_out_lines(result)
    lines += ["files", _row("workdir", workdir), _row("log", workdir_lib.log_path(workdir))]
    if (workdir / workdir_lib.LOSS_PLOT).is_file():
        lines.append(_row("loss curve", workdir / workdir_lib.LOSS_PLOT))
    if result is not None:
        lines.append(_row("metrics", workdir_lib.eval_metrics_path(workdir)))
        lines.append(_row("pictures", workdir_lib.eval_dir(workdir) / workdir_lib.PICTURES))
    return lines


# reference kind -> how the summary says it was applied (score.reference)
_APPLIED = {"mean": "minus the normal per-position mean", "zscore": "z-scored per position"}


def map_description(result: dict) -> str:
    """The map method an evaluation used and the reference it applied, in words; with
    `score.reference=auto`, how far its alignment test was from the margin."""
    record = result.get("reference") or {}
    applied = _APPLIED.get(record.get("kind"), "no per-position reference")
    if record.get("components") and record.get("kind"):
        weights = record.get("weights") or [1] * len(record["components"])
        fused = (
            "averaged"
            if len(set(weights)) == 1
            else "weighted " + ":".join(f"{w:g}" for w in weights)
        )
        applied += " (each of " + " and ".join(record["components"]) + f", then {fused})"
    words = ", ".join([result["method"], applied])
    share = reference.narrowing(record)
    if record.get("setting") == "auto" and share is not None:
        need = reference.MIN_NARROWING
        words += (
            f" (alignment test: normal tail {100 * share:.0f}% narrower, {100 * need:.0f}% needed)"
        )
    return words


def held_out_lines(result: dict) -> list[str]:
    """The held-out check's rows: the maps on pastes over held-out normal images (no label)."""
    check = result["held_out"]
    head = "held-out check (GAAGA pastes on held-out normal images; no defect label)"
    return [head] + [_row(k, _number(v)) for k, v in check.items()]


def print_summary(result: dict | None, workdir) -> None:
    print("\n".join(summary_lines(result, workdir)), flush=True)


def predict_lines(summary: dict) -> list[str]:
    """The closing lines of a prediction (`predict.predict`'s summary dict)."""
    flagged = sum(r["defective"] for r in summary["images"])
    return [
        f"scored {summary['num_scored']} of {summary['num_inputs']} images ({flagged} "
        f"defective at threshold {summary['threshold']:.4g}); skipped "
        f"{len(summary['skipped'])}; results in {summary['output']}",
        _row("scores", summary["scores_csv"]),
    ]
