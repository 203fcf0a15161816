"""``edgekit compress``: run a recipe, or search a budget with no recipe.

Importable without torch: everything heavy is imported inside the command.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import typer

from edgekit.errors import ConfigError

__all__ = ["compress", "parse_input_spec"]

_INPUT = re.compile(r"^(?P<name>[^:]+):(?P<dtype>[a-z0-9]+):(?P<shape>[A-Za-z0-9_,]+)$")


def parse_input_spec(text: str):
    """``name:dtype:dim,dim,...`` (a non-numeric dim is symbolic) → ``TensorSpec``."""
    from pydantic import ValidationError

    from edgekit.manifest import TensorSpec

    m = _INPUT.match(text.strip())
    if not m:
        raise ConfigError(f"--input {text!r}: expected name:dtype:dims, e.g. image:float32:batch,1,32,32")
    dims = [int(d) if d.isdigit() else d for d in m["shape"].split(",") if d]
    try:
        return TensorSpec(name=m["name"], dtype=m["dtype"], shape=dims)
    except ValidationError as exc:
        raise ConfigError(f"--input {text!r}: {exc.errors()[0]['msg']}") from exc


def _floats(text: str | None, what: str, cast=float):
    if not text:
        return ()
    try:
        return tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"{what} {text!r}: expected comma-separated numbers") from exc


@contextlib.contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so a pass in flight removes its temporary folder from the cache."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def compress(
    recipe: Path | None = typer.Option(None, "--recipe", help="YAML recipe (version: 1); other model/data options are then ignored."),
    model: str | None = typer.Option(None, "--model", help="module:factory, or a .onnx / .pt2 / TorchScript file."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="State dict for a module:factory model."),
    inputs: list[str] | None = typer.Option(None, "--input", help="Input spec name:dtype:dims (repeat per input), e.g. image:float32:batch,1,32,32."),
    outputs: list[str] | None = typer.Option(None, "--output", help="Output name (repeat per output)."),
    data: str | None = typer.Option(None, "--data", help=".npz, image folder, or module:function returning (train, val)."),
    metric: str = typer.Option("accuracy", "--metric", help="accuracy, fidelity (cosine), relative-error, or module:function."),
    target: str = typer.Option("x86-avx2", "--target", help="Device profile name or YAML file."),
    max_accuracy_drop: float = typer.Option(0.5, "--max-accuracy-drop", min=0, help="Points of accuracy the result may lose."),
    min_fidelity: float = typer.Option(0.99, "--min-fidelity", min=0, max=1, help="Unlabeled data: minimum cosine similarity to the source."),
    latency_ms: float | None = typer.Option(None, "--latency-ms", help="p50 latency budget at batch 1 on the target."),
    max_size_mb: float | None = typer.Option(None, "--max-size-mb", help="Model size budget."),
    student: str | None = typer.Option(None, "--student", help="Student module:factory taking a width argument (else derived by pruning)."),
    widths: str = typer.Option("8,16,32", "--widths", help="Student widths to try."),
    prune_ratios: str = typer.Option("0.5,0.75,0.9", "--prune-ratios", help="Channel fractions to prune when deriving students."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Distillation epochs per student."),
    name: str = typer.Option("model", "--name", help="Bundle name."),
    version: str = typer.Option("1.0.0", "--version", help="Bundle version."),
    out: Path = typer.Option(..., "--out", help="Output folder (bundle, reports, key when generated)."),
    key: Path | None = typer.Option(None, "--key", help="ed25519 signing key (PEM); generated into --out when absent."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Artifact cache (default: OUT/.cache)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.01, max=0.99),
    bench_iterations: int = typer.Option(200, "--bench-iterations", min=1, help="Timed runs per latency measurement."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Compress a PyTorch/ONNX model into a signed bundle: from a recipe, or by searching a budget."""
    opts = dict(locals())  # the options by name, taken before any other local exists
    from rich.console import Console

    console = Console(stderr=True)
    with _term_as_interrupt():
        try:
            result = _run(console=console, **opts)
        except OSError as exc:  # an unwritable --out, a full disk, a vanished file
            raise ConfigError(f"{exc.filename or 'file system'}: {exc.strerror or exc}") from exc
    _summary(result, console)


def _run(*, recipe, model, checkpoint, inputs, outputs, data, metric, target, max_accuracy_drop, min_fidelity,
         latency_ms, max_size_mb, student, widths, prune_ratios, epochs, name, version, out, key, cache_dir,
         val_fraction, bench_iterations, quiet, console):
    """Dispatch to recipe or budget mode (the command's options by name)."""
    from pydantic import ValidationError

    if recipe is not None:
        from edgekit.compress.run import run_recipe_file

        result = run_recipe_file(recipe, out, key=key, cache_dir=cache_dir, quiet=quiet, console=console,
                                 bench_iterations=bench_iterations)
    else:
        if not model or not data:
            raise ConfigError("give --recipe, or --model and --data (budget mode)")
        from edgekit.compress.budget import SearchSpace, run_budget
        from edgekit.compress.context import Budget
        from edgekit.compress.recipe import BundleInfo, DataSpec, ModelSpec

        try:
            spec = (ModelSpec(path=model) if Path(model).suffix in (".onnx", ".pt2", ".pt", ".ts", ".jit")
                    else ModelSpec(factory=model, checkpoint=str(checkpoint) if checkpoint else None))
            budget = Budget(max_accuracy_drop=max_accuracy_drop, min_fidelity=min_fidelity, latency_ms=latency_ms,
                            max_size_mb=max_size_mb)
            info = BundleInfo(name=name, version=version)
            data_spec = DataSpec(source=data, val_fraction=val_fraction)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"{'.'.join(str(x) for x in err['loc']) or 'option'}: {err['msg']}") from exc
        space = SearchSpace(student=student, widths=_floats(widths, "--widths", int),
                            prune_ratios=_floats(prune_ratios, "--prune-ratios"), epochs=epochs)
        result = run_budget(
            model=spec, inputs=[parse_input_spec(i) for i in inputs] if inputs else None,
            output_names=list(outputs) if outputs else None, data=data_spec, metric=metric, target=target,
            budget=budget, out_dir=out, space=space, info=info, key=key, cache_dir=cache_dir, base_dir=Path.cwd(),
            quiet=quiet, console=console, bench_iterations=bench_iterations,
        )
    return result


def _summary(result, console) -> None:
    r = result.report
    chosen = next((row for row in r["rows"] if row["id"] == r["chosen"]), None)
    console.print(f"[green]bundle[/green] {result.bundle}")
    if chosen:
        m = chosen["metrics"]
        console.print(f"chosen {r['chosen']}: {r['metric']} {m.get(r['metric'], float('nan')):.4f} "
                      f"(source {r['baseline']:.4f}), p50 {m.get('p50_ms', float('nan')):.3f} ms, "
                      f"{m.get('size_mb', float('nan')):.3f} MB")
    console.print(f"signing key: {r['key_note']}")
    console.print(f"reports: {result.out_dir / 'report.md'}, report.json, report.png")
