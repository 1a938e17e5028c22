"""`clawd-edge convert`: a Hugging Face checkpoint (or a PEFT LoRA adapter) to a quantized GGUF plus its manifest."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click

from . import QUANT_TYPES


@click.command("convert")
@click.argument("src", required=False)
@click.option("-q", "--type", "qtype", type=click.Choice(QUANT_TYPES, case_sensitive=False), default=None,
              help="Output type (q4_0 suits ARM boards: llama.cpp repacks it at load). [default: q4_k_m; "
                   "f32 with --lora, as llama.cpp's convert_lora_to_gguf.py]")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output .gguf file or folder (default: ./<name>-<type>.gguf).")
@click.option("--revision", default=None, help="Branch, tag or commit of a hub repo id.")
@click.option("--vocab-only", is_flag=True, help="Write only the tokenizer and metadata, no weights.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Quantization threads (0 = all cores).")
@click.option("--no-progress", is_flag=True, help="No progress bars on stderr.")
@click.option("--lora", "lora", type=click.Path(path_type=Path), default=None,
              help="Convert this PEFT LoRA adapter folder to a GGUF LoRA instead of a model (-q f32/f16/bf16/q8_0).")
@click.option("--base", default=None,
              help="With --lora: the base model's HF folder or repo id (default: the adapter config's "
                   "base_model_name_or_path).")
def convert(src: str | None, qtype: str | None, output: Path | None, revision: str | None, vocab_only: bool,
            threads: int, no_progress: bool, lora: Path | None, base: str | None) -> None:
    """Convert SRC (a Hugging Face model folder or org/name repo id), or a --lora adapter, to GGUF."""
    if lora is not None:
        if src is not None or vocab_only:
            raise click.UsageError("--lora takes no SRC and no --vocab-only; give the base model with --base")
        _convert_lora(lora, base, qtype, output, revision)
        return
    if src is None:
        raise click.UsageError("missing SRC (a Hugging Face model folder or repo id), or use --lora")
    if base is not None:
        raise click.UsageError("--base only applies with --lora")
    qtype = qtype or "q4_k_m"
    from .pipeline import ConvertOptions
    from .pipeline import convert as run

    with _sigterm_unwinds():
        result = run(ConvertOptions(src=src, qtype=qtype.lower(), output=output, revision=revision,
                                    vocab_only=vocab_only, threads=threads, progress=not no_progress))
    click.echo(f"wrote {result.output} ({result.qtype}, sha256 {result.sha256})")
    click.echo(f"manifest {result.manifest}")


def _convert_lora(adapter: Path, base: str | None, qtype: str | None, output: Path | None,
                  revision: str | None) -> None:
    from .lora import DEFAULT_OUTTYPE, OUTTYPES, LoraOptions, convert_lora

    outtype = (qtype or DEFAULT_OUTTYPE).lower()
    if outtype not in OUTTYPES:
        raise click.UsageError(f"-q {outtype} is not a LoRA output type; choose one of {', '.join(OUTTYPES)}")
    with _sigterm_unwinds():
        result = convert_lora(LoraOptions(adapter=adapter, base=base, outtype=outtype, output=output,
                                          revision=revision))
    click.echo(f"wrote {result.output} (LoRA {result.outtype}, {result.n_tensors} tensors, sha256 {result.sha256})")


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    # SIGTERM (systemd, `kill`) unwinds like Ctrl-C so the temp files are removed; the output path is never
    # touched before the final rename either way.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        yield
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
