#!/usr/bin/env python3
"""Benchmarks and checks `clawd-edge convert` against llama.cpp's own tools, measured in the same run.

    python scripts/make_convert_fixtures.py --real /tmp/convert-real     # once: real HF folders (needs torch)
    python scripts/bench_convert.py --real /tmp/convert-real --llama-cpp /path/to/llama.cpp [--runs 3]

For each real checkpoint: HF folder -> F16 with ours and with convert_hf_to_gguf.py (wall time and peak RSS
from /usr/bin/time -v, median of --runs alternating runs after a warm-up of each); the two F16 files compared
tensor by tensor (names, shapes, types, bytes) and key by key; our F16 quantized to Q4_K_M by us and by the
llama-quantize binary, compared byte for byte; the Q4_K_M answers "What is the capital of France?".
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MODELS = ("smollm2-135m-instruct", "gemma3-270m")
QUESTION = "What is the capital of France? Answer in one sentence."


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process, as GNU time reports them."""
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert wall and rss, done.stderr
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    return seconds, int(rss.group(1)) * 1024


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def compare_gguf(ours: Path, ref: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    a, b = GGUFReader(ours), GGUFReader(ref)

    def kv(reader: Any) -> dict[str, Any]:
        return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}

    ka, kb = kv(a), kv(b)
    kv_diff = sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    tensor_diff = sorted(n for n in set(ta) | set(tb)
                         if n not in ta or n not in tb or list(ta[n].shape) != list(tb[n].shape)
                         or ta[n].tensor_type != tb[n].tensor_type or ta[n].data.tobytes() != tb[n].data.tobytes())
    return {"tensors": len(ta), "tensor_diffs": tensor_diff, "same_order": list(ta) == list(tb),
            "tokenizer_kv_diffs": [k for k in kv_diff if k.startswith("tokenizer.")],
            "other_kv_diffs": [k for k in kv_diff if not k.startswith("tokenizer.")]}


def answer(model: Path) -> str:
    """Greedy reply; base models without a chat template get the question as a plain completion prompt."""
    import llama_cpp
    from gguf import GGUFReader

    has_template = "tokenizer.chat_template" in GGUFReader(model).fields
    llm = llama_cpp.Llama(str(model), n_ctx=512, n_threads=2, verbose=False)
    try:
        if has_template:
            reply = llm.create_chat_completion([{"role": "user", "content": QUESTION}], temperature=0.0,
                                               max_tokens=48)
            return str(reply["choices"][0]["message"]["content"]).strip()
        done = llm.create_completion(f"Question: {QUESTION}\nAnswer:", temperature=0.0, max_tokens=32)
        return "(completion) " + str(done["choices"][0]["text"]).strip()
    finally:
        llm.close()


def bench_model(folder: Path, llama_cpp_dir: Path, work: Path, runs: int) -> dict[str, Any]:
    ours_f16, ref_f16 = work / "ours-f16.gguf", work / "ref-f16.gguf"
    ours_cmd = [sys.executable, "-c", "from edge_runtime.cli import main; main()", "convert", str(folder),
                "-q", "f16", "-o", str(ours_f16), "--no-progress"]
    ref_cmd = [sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(folder), "--outtype", "f16",
               "--outfile", str(ref_f16)]
    timed(ours_cmd)
    timed(ref_cmd)  # warm-up: both read the checkpoint from the page cache afterwards
    ours_t, ref_t, ours_m, ref_m = [], [], [], []
    for _ in range(runs):
        t, m = timed(ours_cmd)
        ours_t.append(t)
        ours_m.append(m)
        t, m = timed(ref_cmd)
        ref_t.append(t)
        ref_m.append(m)
    result: dict[str, Any] = {
        "ours_s": statistics.median(ours_t), "ref_s": statistics.median(ref_t),
        "ours_rss": max(ours_m), "ref_rss": max(ref_m), "compare": compare_gguf(ours_f16, ref_f16)}

    from convert.quantize import quantize

    ours_q, bin_q, e2e_q = work / "ours-q4_k_m.gguf", work / "llama-quantize-q4_k_m.gguf", work / "e2e.gguf"
    quantize(ours_f16, ours_q, "q4_k_m", show_progress=False)
    done = subprocess.run([str(llama_cpp_dir / "build" / "bin" / "llama-quantize"), str(ours_f16), str(bin_q),
                           "Q4_K_M"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    subprocess.run([sys.executable, "-c", "from edge_runtime.cli import main; main()", "convert", str(folder),
                    "-q", "q4_k_m", "-o", str(e2e_q), "--no-progress"], check=True, capture_output=True)
    result["q4_k_m_equal"] = sha256(ours_q) == sha256(bin_q)
    result["e2e_q4_k_m_equal"] = sha256(e2e_q) == sha256(bin_q)
    result["answer"] = answer(e2e_q)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=Path("/tmp/convert-real"))
    parser.add_argument("--llama-cpp", type=Path,
                        default=Path("/tmp/llama-ref/llama_cpp_python-0.3.36/vendor/llama.cpp"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    rows = []
    for name in args.models:
        folder = args.real / name
        if not (folder / "config.json").is_file():
            raise SystemExit(f"{folder} missing: run scripts/make_convert_fixtures.py --real {args.real}")
        with tempfile.TemporaryDirectory(prefix="bench-convert-", dir=os.environ.get("TMPDIR")) as tmp:
            res = bench_model(folder, args.llama_cpp, Path(tmp), args.runs)
        cmp = res["compare"]
        print(f"\n## {name}")
        print(f"F16 tensors: {cmp['tensors']}, differing: {cmp['tensor_diffs'] or 'none'}, "
              f"same order: {cmp['same_order']}")
        print(f"tokenizer.* keys differing: {cmp['tokenizer_kv_diffs'] or 'none'}; other keys differing: "
              f"{cmp['other_kv_diffs'] or 'none'}")
        print(f"F16 -> Q4_K_M bytes equal to llama-quantize: {res['q4_k_m_equal']} "
              f"(end-to-end -q q4_k_m: {res['e2e_q4_k_m_equal']})")
        print(f"Q4_K_M answer: {res['answer']!r} -> {'Paris' in res['answer']}")
        rows.append((name, res))
    print("\n| model | HF -> F16 wall (ours / convert_hf_to_gguf.py) | ratio | peak RSS (ours / reference) | ratio |"
          " F16 tensors identical | Q4_K_M == llama-quantize | answers Paris |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['ours_s']:.2f} s / {r['ref_s']:.2f} s | {r['ours_s'] / r['ref_s']:.2f}x | "
              f"{r['ours_rss'] / 2**20:.0f} MiB / {r['ref_rss'] / 2**20:.0f} MiB | "
              f"{r['ours_rss'] / r['ref_rss']:.2f}x | {not r['compare']['tensor_diffs']} | "
              f"{r['q4_k_m_equal'] and r['e2e_q4_k_m_equal']} | {'Paris' in r['answer']} |")


if __name__ == "__main__":
    main()
