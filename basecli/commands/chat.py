"""basecli chat: a conversation-shaped prompt turns a base model into something that acts like an assistant."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from basecli import options as o
DEFAULTS = {"max_tokens": 128, "temperature": 0.7, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}


def chat(
    template: Annotated[Optional[str], typer.Argument(help="A chat template (default: prompts/assistant.txt).")] = None,
    message: Annotated[Optional[str], typer.Option("--message", "-M", help="Send one message, print the answer, exit.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last transcript (or the one --transcript names).")] = False,
    transcript: Annotated[Optional[str], typer.Option("--transcript", help="Name (or path) of the transcript to write, or to continue with --resume.")] = None,
    model: o.Model = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", "-n", help="Longest answer in tokens. Default: template, else 128.", rich_help_panel="Sampling")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", help="0 = greedy. Default: template, else 0.7.", rich_help_panel="Sampling")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).", rich_help_panel="Sampling")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling (1 = off).", rich_help_panel="Sampling")] = None,
    min_p: Annotated[Optional[float], typer.Option("--min-p", help="Drop tokens below min-p x p(top) (0 = off).", rich_help_panel="Sampling")] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option("--repetition-penalty", help="> 1 discourages repeats (1 = off).", rich_help_panel="Sampling")] = None,
    seed: o.Seed = None,
    stop: o.Stop = None,
    base_url: o.BaseUrl = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    quantize: o.Quantize = None,
    trust_remote_code: o.TrustRemoteCode = False,
    allow_pickle: o.AllowPickle = False,
):
    """Chat with a base model through a conversation-shaped prompt.

    Each message is appended as a Human turn; the model writes the Assistant turn and stops where it would start the next Human turn. Every turn is saved to a JSONL transcript under BASECLI_HOME/transcripts as it happens.

    \b
    Examples:
      basecli chat                               # interactive; /help inside
      basecli chat --message "What is 2+2?"      # one answer
      printf 'Hi\\nWhat is a zebra?\\n' | basecli chat   # one answer per line
      basecli chat --resume                      # continue the last conversation
    """
    from basecli.text import templates
    from basecli.chat import transcripts
    from basecli.backends import open_backend
    from basecli.config import SamplingParams
    from basecli.chat.conversation import Chat
    from basecli.errors import UsageError

    if message is not None and not message.strip():
        raise UsageError("--message is empty; give the text to send, e.g. --message \"What is 2+2?\"")
    turns: list = []
    log = None
    if resume:
        path = transcripts.find(transcript)
        header, turns = transcripts.replay(path)
        template = template or header.get("template")
    tpl = templates.load(template or templates.prompts_dir() / "assistant.txt")
    given = {"max_tokens": max_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
             "repetition_penalty": repetition_penalty}
    values = {k: v if v is not None else tpl.settings.get(k, DEFAULTS[k]) for k, v in given.items()}
    extra_stops = tuple(o.unescape(s) for s in stop) if stop else ()
    params = SamplingParams(**values, seed=seed if seed is not None else tpl.settings.get("seed"), stop=extra_stops)

    if sys.stdin.isatty() and message is None:
        print(f"basecli: loading {model or 'the embedded model'}...", file=sys.stderr, flush=True)
    backend = open_backend(model, base_url=base_url, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                           allow_pickle=allow_pickle, quantize=quantize)
    if resume:
        log = transcripts.Transcript(path)
        print(f"basecli: resuming {path} ({len(turns)} turns)", file=sys.stderr)
    else:
        log = transcripts.Transcript.new(str(template or templates.prompts_dir() / "assistant.txt"), backend.name, transcript)
    note = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    session = Chat(backend, tpl, params, transcript=log, turns=turns, notify=note)
    try:
        if message is not None:
            print(session.ask(message), flush=True)
        elif not sys.stdin.isatty():
            for line in sys.stdin:
                if line.strip():
                    print(session.ask(line), flush=True)
        else:
            from basecli.chat.repl import Repl

            human, assistant = templates.chat_labels(tpl)
            repl = Repl(session, human=human, assistant=assistant)
            session.notify = repl.note
            repl.run()
            print(f"(transcript: {log.path})", file=sys.stderr)
    finally:
        log.close()
