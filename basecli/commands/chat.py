"""basecli chat: a conversation-shaped prompt turns a base model into something that acts like an assistant."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from basecli import options as o


@o.grouped
def chat(
    template: Annotated[Optional[str], typer.Argument(help="A chat template (default: prompts/assistant.txt).")] = None,
    message: Annotated[Optional[str], typer.Option("--message", "-M", help="Send one message (@FILE sends a file), print the answer, exit.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last transcript (or the one --transcript names).")] = False,
    transcript: Annotated[Optional[str], typer.Option("--transcript", help="Name (or path) of the transcript to write, or to continue with --resume.")] = None,
    model: o.ModelChoice = o.model_choice(),
    sampling: o.SamplingFlags = o.template_sampling(max_tokens=128, temperature=0.7, fresh_seed=False,
                                                    help={"max_tokens": "Longest answer in tokens. Default: template, else 128."}),
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
    from basecli.chat.conversation import Chat
    from basecli.errors import UsageError
    from basecli.text.inputs import read_lines, read_text

    if message is not None:
        message = read_text(message, what="--message")  # @FILE sends the file, as everywhere else
    if message is not None and not message.strip():
        raise UsageError("--message is empty; give the text to send, e.g. --message \"What is 2+2?\"")
    turns: list = []
    log = None
    if resume:
        path = transcripts.find(transcript)
        header, turns = transcripts.replay(path)
        if not isinstance(header.get("template", ""), str):
            raise UsageError(f"{path}: its start record names no template; is this a basecli transcript?")
        template = template or header.get("template")
    tpl = templates.load(template or templates.prompts_dir() / "assistant.txt")
    params = sampling.resolve(tpl.settings)

    if sys.stdin.isatty() and message is None:
        print(f"basecli: loading {model.model or 'the embedded model'}...", file=sys.stderr, flush=True)
    backend = model.open()
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
            for line in read_lines(sys.stdin.buffer):
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
