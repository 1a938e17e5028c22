"""`clawd-edge ocr` end to end through click: files, stdin, camera video, JSON, and one-line errors."""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edge_runtime.cli import cli

SIGN = ("OPEN DAILY 9AM TO 5PM", "Please ring the bell twice", "Platform 7: Express to Berlin")


def _write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


def test_image_file_prints_text(tmp_path: Path, sign: Callable[..., np.ndarray]) -> None:
    png = _write_png(tmp_path / "sign.png", sign(SIGN, 24, angle=-2.0, noise=8.0))
    result = CliRunner().invoke(cli, ["ocr", str(png)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "\n".join(SIGN) + "\n"


def test_stdin_and_json(tmp_path: Path, sign: Callable[..., np.ndarray]) -> None:
    data = io.BytesIO()
    from PIL import Image

    Image.fromarray(sign(SIGN[:2], 24)).save(data, format="PNG")
    result = CliRunner().invoke(cli, ["ocr", "-", "--json", "--psm", "6"], input=data.getvalue())
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["text"] == "\n".join(SIGN[:2])
    assert {"text", "conf", "box"} == set(body["words"][0])


def test_camera_uri_and_configured_camera(tmp_path: Path, sign_video: Callable[..., Path]) -> None:
    video = sign_video()
    frame_file = tmp_path / "frame.png"
    result = CliRunner().invoke(cli, ["ocr", "--camera", f"file:{video}", "--save-frame", str(frame_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "\n".join(SIGN) + "\n"
    assert frame_file.stat().st_size > 1000
    config = tmp_path / "config.yaml"
    config.write_text(f"modules:\n  ocr:\n    enabled: false\n    camera: file:{video}\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "ocr", "--camera"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == SIGN[0]


def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["ocr"], 2, "give either IMAGE or --camera"),
        (["ocr", "x.png", "--camera", "0"], 2, "give either IMAGE or --camera"),
        (["ocr", "--camera"], 2, "modules.ocr.camera is not set"),
        (["ocr", "--camera", "webcam"], 2, "is not a camera"),
        (["ocr", str(tmp_path / "missing.png")], 1, "No such file"),
        (["ocr", str(tmp_path / "missing.png"), "--lang", "x y"], 2, "modules.ocr.lang"),
        (["ocr", "--camera", f"file:{tmp_path / 'none.avi'}"], 1, "camera file not found"),
    ]
    (tmp_path / "text.png").write_text("not an image")
    cases.append((["ocr", str(tmp_path / "text.png")], 1, "not an image"))
    for args, code, message in cases:
        result = runner.invoke(cli, args)
        assert result.exit_code == code, (args, result.output)
        assert result.stderr.startswith("error: ") and message in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1
