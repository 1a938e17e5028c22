"""One conversion end to end: resolve, plan, stream the GGUF to a temp file, quantize, manifest, atomic rename."""
from __future__ import annotations

import errno
import importlib.metadata
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import gguf
import numpy as np

from edge_runtime import __version__
from edge_runtime.errors import ConvertError

from . import QUANT_TYPES, manifest
from .arch import Model, load_model
from .quantize import quantize
from .safetensors_io import index_checkpoint
from .source import ALLOW_PATTERNS, Source, resolve
from .tensors import Planned, add_infos, plan
from .tokenizer import Vocab, build_vocab

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType
_FLOAT_TYPES = MappingProxyType({
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32), "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16)})


@dataclass(frozen=True)
class ConvertOptions:
    """What `clawd-edge convert` was asked to do."""

    src: str
    qtype: str = "q4_k_m"
    output: Path | None = None
    revision: str | None = None
    vocab_only: bool = False
    threads: int = 0
    progress: bool = True


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    manifest: Path
    sha256: str
    qtype: str


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in ("gguf", "numpy", "llama-cpp-python", "tokenizers", "sentencepiece"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _output_path(options: ConvertOptions, source: Source) -> Path:
    stem = (source.repo_id.split("/")[-1] if source.repo_id else source.folder.name) or "model"
    name = f"{stem}-{'vocab' if options.vocab_only else options.qtype}.gguf"
    out = options.output or Path(name)
    if out.is_dir():
        out = out / name
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: output folder does not exist")
    return out.resolve()


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False, disable=None, mininterval=0.5)


def _write_gguf(path: Path, model: Model, vocab: Vocab, planned: list[Planned] | None, ftype_name: str,
                progress: bool) -> None:
    """Header + KV via gguf.GGUFWriter, then tensor data streamed chunk by chunk into the same file."""
    file_type = _FLOAT_TYPES[ftype_name][1]
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[model.arch.gguf_arch])
    if planned is None:
        planned = []
    add_infos(writer, planned)
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    writer.add_type(gguf.GGUFType.MODEL)
    meta = gguf.Metadata.load(None, model.folder, None, total)
    if meta.name is None:
        meta.name = model.folder.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    meta.set_gguf_meta_model(writer)
    for add in model.arch.metadata:
        add(model, writer)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.write(writer)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    align = writer.data_alignment
    out.write(bytes(gguf.GGUFWriter.ggml_pad(out.tell(), align) - out.tell()))
    bar = _bar(sum(p.nbytes for p in planned), f"write {ftype_name}", progress)
    try:
        for tensor in planned:
            written = 0
            for chunk in tensor.chunks():
                data = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
                out.write(data.data)
                written += data.size
                if bar is not None:
                    bar.update(data.size)
            if written != tensor.nbytes:
                raise ConvertError(f"internal error: {tensor.name} produced {written} bytes, "
                                   f"expected {tensor.nbytes}")
            out.write(bytes(gguf.GGUFWriter.ggml_pad(written, align) - written))
        out.flush()
        os.fsync(out.fileno())
    finally:
        if bar is not None:
            bar.close()
        writer.close()


def _inputs(source: Source, shards: list[Path], vocab_only: bool) -> list[Path]:
    folder = source.folder
    found = {p for pattern in ALLOW_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    found = {p for p in found if not p.name.endswith(".safetensors") and p.name != "README.md"}
    if not vocab_only:
        found.update(shards)
    return sorted(found)


def _unlink(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            log.warning("could not remove temporary file %s", path)


def convert(options: ConvertOptions, *, on_source: Callable[[Source], None] | None = None) -> ConvertResult:
    """Run one conversion; on any failure nothing is left at the output path (nor temp files beside it)."""
    qtype = options.qtype.lower()
    if qtype not in QUANT_TYPES:
        raise ConvertError(f"unknown type {options.qtype!r}; choose one of {', '.join(QUANT_TYPES)}")
    source = resolve(options.src, options.revision)
    if on_source is not None:
        on_source(source)
    model = load_model(source.folder)
    vocab = build_vocab(model)
    shards: list[Path] = []
    planned: list[Planned] | None = None
    float_type = qtype if qtype in _FLOAT_TYPES else "f16"
    if not options.vocab_only:
        refs, shards = index_checkpoint(source.folder)
        if qtype not in _FLOAT_TYPES and any(r.dtype == "BF16" for r in refs.values()):
            float_type = "bf16"  # keep bf16 checkpoints lossless up to the quantizer
        planned = plan(model, refs, _FLOAT_TYPES[float_type][0], vocab.n_vocab_real)
    out = _output_path(options, source)
    tag = f"{os.getpid()}"
    tmp_float = out.with_name(f".{out.name}.{tag}.{float_type}.part")
    tmp_out = out.with_name(f".{out.name}.{tag}.part")
    mpath = manifest.manifest_path(out)
    try:
        if qtype in _FLOAT_TYPES or options.vocab_only:
            _write_gguf(tmp_out, model, vocab, planned, float_type, options.progress)
        else:
            _write_gguf(tmp_float, model, vocab, planned, float_type, options.progress)
            quantize(tmp_float, tmp_out, qtype, threads=options.threads, show_progress=options.progress)
            _unlink(tmp_float)
        digest = manifest.sha256_file(tmp_out)
        data = manifest.build(folder=source.folder, repo_id=source.repo_id, revision=source.revision,
                              hf_architecture=model.hf_arch, gguf_architecture=model.arch.gguf_arch.name.lower(),
                              inputs=_inputs(source, shards, options.vocab_only), output_name=out.name,
                              output_size=tmp_out.stat().st_size, output_sha256=digest,
                              quant_type="vocab" if options.vocab_only else qtype, vocab_only=options.vocab_only,
                              tool_version=__version__, versions=_versions())
        # Manifest first: a GGUF at the output path always has its manifest beside it.
        manifest.write(mpath, data)
        try:
            os.replace(tmp_out, out)
        except OSError:
            _unlink(mpath)
            raise
    except OSError as exc:
        _unlink(tmp_float, tmp_out)
        if exc.errno == errno.ENOSPC:
            raise ConvertError(f"no space left on device writing {out.name} in {out.parent}; nothing was "
                               "written to the output path") from exc
        raise ConvertError(f"writing {out}: {exc.strerror or exc}") from exc
    except BaseException:
        _unlink(tmp_float, tmp_out)
        raise
    return ConvertResult(out, mpath, digest, qtype)
