"""Chat with a base model: the conversation-shaped prompt, the REPL, durable transcripts."""
