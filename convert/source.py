"""Resolves the SRC argument: a local Hugging Face folder, or a hub repo id fetched with only the files needed."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import ConvertError
from edge_runtime.extras import optional_import

# Only what conversion reads; never *.bin, consolidated.* (Mistral's duplicate format) or optimizer states.
ALLOW_PATTERNS = (
    "config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.json", "chat_template.jinja", "additional_chat_templates/*.jinja", "README.md",
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


@dataclass(frozen=True)
class Source:
    """Where the checkpoint is on disk and, for hub models, which repo and commit it came from."""

    folder: Path
    repo_id: str | None = None
    revision: str | None = None  # the commit hash snapshot_download resolved


def resolve(src: str, revision: str | None = None) -> Source:
    """A local folder is used as is; an `org/name` id goes through the Hugging Face cache (HF_HUB_OFFLINE works)."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConvertError(f"{src}: expected a Hugging Face model folder, got a file")
        if revision is not None:
            raise ConvertError("--revision only applies to a hub repo id, not to a local folder")
        return Source(path.resolve())
    if not _REPO_ID.match(src):
        raise ConvertError(f"{src}: no such folder, and not a Hugging Face repo id (org/name)")
    # The names below are typed imports; this says in one line which extra to install if the hub is missing.
    optional_import("huggingface_hub", what="huggingface-hub", extra="convert")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    try:
        folder = Path(snapshot_download(repo_id=src, revision=revision, allow_patterns=list(ALLOW_PATTERNS)))
    except LocalEntryNotFoundError as exc:
        raise ConvertError(f"{src}: not in the local Hugging Face cache and the hub cannot be reached "
                           f"(HF_HUB_OFFLINE or no network): {exc}") from exc
    except RepositoryNotFoundError as exc:
        raise ConvertError(f"{src}: no such repository on the Hugging Face hub (or it is gated/private)") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ConvertError(f"{src}: download failed: {exc}") from exc
    # Snapshot folders are named by the commit they hold, which is what the manifest should pin.
    return Source(folder, repo_id=src, revision=folder.name)
