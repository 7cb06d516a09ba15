"""Text in and out of tokens: prompt inputs, tokenizers, tiktoken encodings, prompt templates."""
