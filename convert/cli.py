"""`clawd-edge convert`: a Hugging Face checkpoint (folder or repo id) to a quantized GGUF plus its manifest."""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from . import QUANT_TYPES


@click.command("convert")
@click.argument("src")
@click.option("-q", "--type", "qtype", type=click.Choice(QUANT_TYPES, case_sensitive=False), default="q4_k_m",
              show_default=True, help="Output type (q4_0 suits ARM boards: llama.cpp repacks it at load).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output .gguf file or folder (default: ./<name>-<type>.gguf).")
@click.option("--revision", default=None, help="Branch, tag or commit of a hub repo id.")
@click.option("--vocab-only", is_flag=True, help="Write only the tokenizer and metadata, no weights.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Quantization threads (0 = all cores).")
@click.option("--no-progress", is_flag=True, help="No progress bars on stderr.")
def convert(src: str, qtype: str, output: Path | None, revision: str | None, vocab_only: bool, threads: int,
            no_progress: bool) -> None:
    """Convert SRC (a Hugging Face model folder or org/name repo id) to GGUF."""
    from .pipeline import ConvertOptions
    from .pipeline import convert as run

    # SIGTERM (systemd, `kill`) unwinds like Ctrl-C so the temp files are removed; the output path is never
    # touched before the final rename either way.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        result = run(ConvertOptions(src=src, qtype=qtype.lower(), output=output, revision=revision,
                                    vocab_only=vocab_only, threads=threads, progress=not no_progress))
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    click.echo(f"wrote {result.output} ({result.qtype}, sha256 {result.sha256})")
    click.echo(f"manifest {result.manifest}")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
