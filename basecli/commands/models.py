"""basecli models: the local aliases, what is cached on this machine, and saved remote profiles."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from basecli.views.records import write_json

app = typer.Typer(help="List models; save, list and remove remote server profiles.", no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]})


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The profile's name, used later as --model NAME.")],
    base_url: Annotated[str, typer.Option("--base-url", help="The server's OpenAI-compatible URL, e.g. http://gpu-box:8000/v1.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The model id the server knows (default: the first it lists).")] = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="NAME of the environment variable holding the API key (the key is never stored).")] = None,
    kind: Annotated[str, typer.Option("--kind", help="Server software, for its parameter names: auto, vllm, llamacpp, llama-cpp-python, openai.")] = "auto",
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="A local tokenizer for servers without a tokenize endpoint: a tiktoken encoding, model alias or directory.")] = None,
    context_length: Annotated[Optional[int], typer.Option("--context-length", min=1, help="The model's context window, if the server does not report it.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite a profile of the same name.")] = False,
):
    """Save a remote model under NAME, then use it as `--model NAME` with any command.

    \b
    Examples:
      basecli models add llama405 --base-url https://api.example.com/v1 --model meta-llama/Meta-Llama-3.1-405B --api-key-env EXAMPLE_API_KEY
      basecli models add local-vllm --base-url http://localhost:8000/v1 --model meta-llama/Llama-3.1-8B
      basecli complete "The capital of France is" --model llama405
    """
    from basecli.backends import profiles
    where = profiles.add(profiles.Profile(name=name, base_url=base_url, model=model, api_key_env=api_key_env, kind=kind,
                                          tokenizer=tokenizer, context_length=context_length), replace=replace)
    key_note = ""
    if api_key_env:
        key_note = f"; the key is read from ${api_key_env}" + ("" if os.environ.get(api_key_env) else f" (not set now: export {api_key_env}=...)")
    print(f"saved profile {name!r} in {where}{key_note}", file=sys.stderr)


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="The profile to delete.")]):
    """Delete a saved profile."""
    from basecli.backends import profiles
    profiles.remove(name)
    print(f"removed profile {name!r}", file=sys.stderr)


@app.command("list")
def list_models(json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False):
    """Show the local aliases, the models cached on this machine and the saved remote profiles."""
    from basecli.weights import models
    from basecli.backends import profiles
    aliases = [{"alias": a, "source": "embedded GGUF (default)" if t == models.EMBEDDED else t} for a, t in models.ALIASES.items()]
    cached = cached_models()
    saved = [{"name": p.name, "base_url": p.base_url, "model": p.model, "kind": p.kind, "api_key_env": p.api_key_env,
              "api_key_set": bool(p.api_key_env and os.environ.get(p.api_key_env))} for p in profiles.load_all().values()]
    if json_out:
        write_json({"aliases": aliases, "cached": cached, "profiles": saved})
        return
    from basecli.views.models import show_lists

    show_lists(aliases, cached, saved)


def cached_models() -> list[dict]:
    """Converted GGUF models in BASECLI_HOME and model repos in the Hugging Face cache, without network."""
    from basecli import config
    from basecli.weights import models
    out = []
    root = config.home() / "models"
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if models.is_complete(folder):
                info = models.manifest(folder)
                size = sum(info.get("files", {}).values())
                out.append({"name": os.path.basename(info.get("source", folder.name)), "where": str(folder), "size_mb": round(size / 1e6, 1)})
    try:
        from huggingface_hub import scan_cache_dir

        for repo in sorted(scan_cache_dir().repos, key=lambda r: r.repo_id):
            if repo.repo_type == "model":
                out.append({"name": repo.repo_id, "where": str(repo.repo_path), "size_mb": round(repo.size_on_disk / 1e6, 1)})
    except Exception:  # no cache yet, or an unreadable one: nothing cached to show
        pass
    return out
