"""Model files: which weights a name means, GGUF reading and conversion, what a model is made of."""
